//! Policy decision cost: one field decision and a 20-field disclosure over a policy set of 20
//! fields, 10 purposes and 10 recipients, plus loading that set. Target: well under 2 µs per
//! field decision.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use custodia::policy::{ConsentStatus, FieldDecision, PolicySet, Subject};

const FIELDS: usize = 20;
const PURPOSES: usize = 10;
const RECIPIENTS: usize = 10;
const NOW: i64 = 1_700_000_000_000;

/// A customer who granted every consent with the right notice, objected to nothing, is not
/// restricted and wrote every field a day ago: every check runs to the end.
struct Consenting;

impl Subject for Consenting {
    fn newest_consent(&self, purpose: &str) -> Option<ConsentStatus<'_>> {
        Some(ConsentStatus {
            granted: true,
            // Notice names follow the purpose names below: "purpose-3" wants "notice-3".
            notice: Some(notice_for(purpose)),
        })
    }
    fn objected(&self, _purpose: &str) -> bool {
        false
    }
    fn restricted(&self) -> bool {
        false
    }
    fn written_at(&self, _field: &str) -> Option<i64> {
        Some(NOW - 86_400_000)
    }
}

fn notice_for(purpose: &str) -> &'static str {
    const NOTICES: [&str; PURPOSES] = [
        "notice-0", "notice-1", "notice-2", "notice-3", "notice-4", "notice-5", "notice-6", "notice-7",
        "notice-8", "notice-9",
    ];
    let i = purpose.strip_prefix("purpose-").and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
    NOTICES[i % PURPOSES]
}

fn sources() -> Vec<(String, String)> {
    let bases = ["consent", "contract", "legitimate_interests", "legal_obligation"];
    let types = ["string", "email", "phone", "date", "country"];
    let masks = ["none", "redact", "last4", "none", "none"];
    let all_purposes = (0..PURPOSES).map(|p| format!("\"purpose-{p}\"")).collect::<Vec<_>>().join(", ");
    let all_fields = (0..FIELDS).map(|f| format!("\"field-{f}\"")).collect::<Vec<_>>().join(", ");

    let mut purposes = String::new();
    for p in 0..PURPOSES {
        purposes += &format!(
            "[purposes.purpose-{p}]\nbasis = \"{}\"\nnotice = \"notice-{p}\"\n",
            bases[p % bases.len()]
        );
    }
    let mut fields = String::new();
    for f in 0..FIELDS {
        fields += &format!(
            "[fields.field-{f}]\ncategory = \"user.bench\"\ntype = \"{}\"\npurposes = [{all_purposes}]\n\
             mask = \"{}\"\nretention_days = 365\n",
            types[f % types.len()],
            masks[f % masks.len()]
        );
    }
    let mut recipients = String::new();
    for r in 0..RECIPIENTS {
        recipients += &format!("[recipients.recipient-{r}]\ngrants = [\n");
        for p in 0..PURPOSES {
            recipients += &format!(
                "  {{ purpose = \"purpose-{p}\", fields = [{all_fields}], mask = {{ field-{} = \"redact\" }} }},\n",
                (r + p) % FIELDS
            );
        }
        recipients += "]\n";
    }
    vec![
        ("purposes.toml".into(), purposes),
        ("fields.toml".into(), fields),
        ("recipients.toml".into(), recipients),
    ]
}

fn bench_policy(c: &mut Criterion) {
    let sources = sources();
    let Ok(set) = PolicySet::from_sources(&sources) else {
        panic!("the bench policy set must be valid");
    };
    let field_names: Vec<String> = (0..FIELDS).map(|f| format!("field-{f}")).collect();
    let subject = Consenting;
    // purpose-8 has basis consent with a notice: the path with the most checks.
    let (recipient, purpose) = ("recipient-9", "purpose-8");
    assert!(matches!(
        set.decide_disclosure(recipient, purpose, "field-19", &subject, NOW),
        FieldDecision::Allow { .. }
    ));

    c.bench_function("decide_disclosure one field (allowed, consent)", |b| {
        b.iter(|| {
            set.decide_disclosure(
                black_box(recipient),
                black_box(purpose),
                black_box("field-19"),
                black_box(&subject),
                black_box(NOW),
            )
        })
    });

    c.bench_function("decide_disclosure 20 fields (allowed, consent)", |b| {
        b.iter(|| {
            let mut allowed = 0usize;
            for field in black_box(&field_names) {
                let decision = set.decide_disclosure(
                    black_box(recipient),
                    black_box(purpose),
                    field,
                    black_box(&subject),
                    black_box(NOW),
                );
                allowed += usize::from(decision.is_allow());
            }
            allowed
        })
    });

    c.bench_function("decide_use one field (allowed, consent)", |b| {
        b.iter(|| {
            set.decide_use(black_box(purpose), black_box("field-19"), black_box(&subject), black_box(NOW))
        })
    });

    c.bench_function("from_sources 20 fields 10 purposes 10 recipients", |b| {
        b.iter(|| PolicySet::from_sources(black_box(&sources)).is_ok())
    });
}

criterion_group!(benches, bench_policy);
criterion_main!(benches);
