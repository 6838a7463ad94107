//! The Unicode rules that give one identifier one spelling: canonical composition (NFC), the
//! characters an identifier may not contain, and the mixed-script rule against lookalikes.
//!
//! Everything here is a pure function over text, backed by ICU4X data (the same Unicode version
//! `idna` uses for domain names). Nothing here may put its input into an error or a log line: the
//! answers are `bool`s and normalised copies.

use std::borrow::Cow;
use std::collections::BTreeSet;

use icu_normalizer::ComposingNormalizerBorrowed;
use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory, GeneralCategoryGroup, Script};
use icu_properties::script::ScriptWithExtensions;
use icu_properties::{CodePointMapData, CodePointSetData};

/// The Normalization Form C of `text` (Unicode Standard Annex #15): canonically equivalent
/// spellings (a precomposed `ë` and `e` + U+0308, the Kelvin sign U+212A and `K`) become one.
/// Borrows when `text` is already in NFC, which is the common case.
pub fn nfc(text: &str) -> Cow<'_, str> {
    ComposingNormalizerBorrowed::new_nfc().normalize(text)
}

/// Whether `text` is unchanged by NFKC (UAX #15), i.e. holds no compatibility character such as
/// fullwidth `ｋ`, the ligature `ﬁ`, a superscript or mathematical `𝐤`. Meant for text already
/// in NFC, where it says "NFKC would fold something here".
pub fn is_nfkc_stable(text: &str) -> bool {
    ComposingNormalizerBorrowed::new_nfkc().is_normalized(text)
}

/// Whether `c` may not appear in an identifier: white space, controls (Cc), format characters
/// (Cf: zero-width and bidirectional controls), private-use (Co) and unassigned (Cn) code points,
/// and every Default_Ignorable_Code_Point (invisible characters such as U+00AD SOFT HYPHEN or
/// variation selectors). Such characters make two spellings look the same, and an unassigned one
/// might normalise differently once a later Unicode version assigns it.
pub fn is_forbidden_in_identifier(c: char) -> bool {
    c.is_whitespace()
        || GeneralCategoryGroup::Other.contains(CodePointMapData::<GeneralCategory>::new().get(c))
        || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
}

/// True for a non-ASCII character that may stand in an identifier such as a mailbox name: a
/// letter, a combining mark or a decimal digit (General Category L, M or Nd). Symbols and
/// punctuation outside ASCII (`℮`, `∩`, `‐`) are lookalikes of letters or of ASCII punctuation
/// and are refused.
pub fn is_identifier_letter(c: char) -> bool {
    let category = CodePointMapData::<GeneralCategory>::new().get(c);
    GeneralCategoryGroup::Letter.contains(category)
        || GeneralCategoryGroup::Mark.contains(category)
        || category == GeneralCategory::DecimalNumber
}

/// Whether `text` is at most "Highly Restrictive" in the sense of Unicode Technical Standard #39
/// §5.2: all its letters come from one script, or it is Latin combined only with the scripts of
/// Japanese (Han, Hiragana, Katakana), Chinese (Han, Bopomofo) or Korean (Han, Hangul).
///
/// Scripts are taken from the Script_Extensions property and resolved as UTS #39 §5.1 says:
/// Common and Inherited characters (digits, punctuation, combining marks) fit every script, and
/// Han, Hiragana, Katakana, Hangul and Bopomofo count also as the writing systems they belong to.
/// So `иван` and `山田たろう` pass, and `pаypal` with a Cyrillic `а` does not.
pub fn is_single_script_or_cjk_with_latin(text: &str) -> bool {
    let scripts = ScriptWithExtensions::new();
    // `None` stands for "every script", the neutral element of the intersection.
    let mut resolved: Option<BTreeSet<ScriptTag>> = None;
    let mut resolved_without_latin: Option<BTreeSet<ScriptTag>> = None;
    for c in text.chars() {
        let own: Vec<Script> = scripts.get_script_extensions_val(c).iter().collect();
        if own.contains(&Script::Common) || own.contains(&Script::Inherited) {
            continue;
        }
        let set = augmented(&own);
        let latin = set.contains(&ScriptTag::Script(Script::Latin));
        intersect(&mut resolved, &set);
        if !latin {
            intersect(&mut resolved_without_latin, &set);
        }
    }
    match (resolved, resolved_without_latin) {
        (None, _) => true,
        (Some(all), _) if !all.is_empty() => true,
        (_, Some(rest)) => {
            [ScriptTag::Japanese, ScriptTag::Chinese, ScriptTag::Korean].iter().any(|s| rest.contains(s))
        }
        (_, None) => false,
    }
}

/// A script, or one of the writing systems UTS #39 §5.1 adds to the resolved script set
/// (ISO 15924 `Jpan`, `Hanb` and `Kore`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ScriptTag {
    Script(Script),
    /// Jpan: Han + Hiragana + Katakana.
    Japanese,
    /// Hanb: Han + Bopomofo.
    Chinese,
    /// Kore: Han + Hangul.
    Korean,
}

/// The augmented script set of one character's Script_Extensions (UTS #39 §5.1).
fn augmented(scripts: &[Script]) -> BTreeSet<ScriptTag> {
    let mut set: BTreeSet<ScriptTag> = scripts.iter().copied().map(ScriptTag::Script).collect();
    for script in scripts {
        let extra: &[ScriptTag] = match *script {
            Script::Han => &[ScriptTag::Japanese, ScriptTag::Chinese, ScriptTag::Korean],
            Script::Hiragana | Script::Katakana => &[ScriptTag::Japanese],
            Script::Hangul => &[ScriptTag::Korean],
            Script::Bopomofo => &[ScriptTag::Chinese],
            _ => &[],
        };
        set.extend(extra);
    }
    set
}

fn intersect(acc: &mut Option<BTreeSet<ScriptTag>>, set: &BTreeSet<ScriptTag>) {
    match acc {
        None => *acc = Some(set.clone()),
        Some(acc) => acc.retain(|s| set.contains(s)),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn nfc_unites_canonically_equivalent_spellings() {
        assert_eq!(nfc("zoe\u{0308}"), "zo\u{00eb}");
        assert_eq!(nfc("zo\u{00eb}"), "zo\u{00eb}");
        assert!(matches!(nfc("plain ascii"), Cow::Borrowed(_)));
        // Singleton decompositions: these signs are canonically the letters they look like.
        assert_eq!(nfc("\u{212a}"), "K");
        assert_eq!(nfc("\u{2126}"), "\u{03a9}");
        assert_eq!(nfc("\u{212b}"), "\u{00c5}");
    }

    #[test]
    fn compatibility_characters_are_not_nfkc_stable() {
        for folded in ["\u{ff4b}", "\u{fb01}", "x\u{00b2}", "\u{1d424}", "\u{2460}", "\u{00aa}"] {
            assert!(!is_nfkc_stable(folded), "{folded:?}");
        }
        for kept in ["k", "zo\u{00eb}", "\u{0438}\u{0432}\u{0430}\u{043d}", "\u{5c71}\u{7530}", "a+b.c-d_e"] {
            assert!(is_nfkc_stable(kept), "{kept:?}");
        }
    }

    #[test]
    fn invisible_control_private_and_unassigned_characters_are_forbidden() {
        for c in [
            ' ', '\t', '\u{0}', '\u{7f}', '\u{a0}', '\u{ad}', '\u{200b}', '\u{200d}', '\u{202e}', '\u{fe0f}',
            '\u{feff}', '\u{e000}', '\u{378}', '\u{3000}',
        ] {
            assert!(is_forbidden_in_identifier(c), "{c:?}");
        }
        for c in ['a', 'Z', '0', '+', '.', '-', '_', '\u{eb}', '\u{0438}', '\u{5c71}', '\u{0660}'] {
            assert!(!is_forbidden_in_identifier(c), "{c:?}");
        }
    }

    #[test]
    fn one_script_or_latin_with_cjk_passes_and_other_mixtures_do_not() {
        for good in [
            "jane.doe+tag",
            "zo\u{00eb}",
            "\u{0438}\u{0432}\u{0430}\u{043d}",         // Cyrillic
            "\u{03b1}\u{03b8}\u{03b7}\u{03bd}\u{03b1}", // Greek
            "\u{5c71}\u{7530}\u{305f}\u{308d}\u{3046}", // Han + Hiragana (Japanese)
            "tanaka\u{5c71}\u{7530}",                   // Latin + Han
            "kim\u{AE40}\u{91D1}",                      // Latin + Hangul + Han (Korean)
            "\u{0645}\u{062d}\u{0645}\u{062f}\u{0661}", // Arabic with an Arabic-Indic digit
            "1234-5678",
            "",
        ] {
            assert!(is_single_script_or_cjk_with_latin(good), "{good:?}");
        }
        for bad in [
            "p\u{0430}ypal",    // Cyrillic а in Latin
            "\u{03bf}mega",     // Greek ο in Latin
            "\u{0438}van",      // Cyrillic with Latin
            "\u{03b1}\u{0430}", // Greek with Cyrillic
            "abc\u{0661}",      // Latin with an Arabic-Indic digit
            "\u{305f}\u{AE40}", // Hiragana with Hangul
        ] {
            assert!(!is_single_script_or_cjk_with_latin(bad), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn nfc_is_idempotent(s in "\\PC{0,24}") {
            let once = nfc(&s).into_owned();
            prop_assert_eq!(nfc(&once), once.as_str());
        }
    }
}
