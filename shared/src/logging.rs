//! Logging for the service binaries: one JSON object per line when standard output is
//! not a terminal (a file, a pipe, a container's log driver), readable text with colours
//! on a terminal. `FLEET_LOG_FORMAT=json|text` overrides the guess; `RUST_LOG` filters
//! (default `info`).
//!
//! A JSON line carries `ts`, `level`, `service`, `message`, the event's own fields, the
//! fields of every span it is in (an attempt's `job_id`, `task_id`, `attempt`), and the
//! fields the process set for all its lines ([`set_field`]: the executor's
//! `executor_id`), all at the top level, so that a log pipeline can filter on them
//! without parsing text:
//!
//! ```text
//! {"ts":"2026-12-01T17:02:03.412Z","level":"INFO","service":"fleet-executor","executor_id":"gpu-1","job_id":"…","task_id":"…","attempt":1,"message":"cancelling an attempt"}
//! ```

use std::io::IsTerminal;
use std::sync::RwLock;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Fields on every line of this process (set once it knows them).
static FIELDS: RwLock<Option<Map<String, Value>>> = RwLock::new(None);

/// Adds a field to every later line of this process (JSON lines only; text lines are
/// read by a person who knows which process they look at).
pub fn set_field(name: &str, value: impl Into<Value>) {
    if let Ok(mut f) = FIELDS.write() {
        f.get_or_insert_with(Map::new)
            .insert(name.to_owned(), value.into());
    }
}

/// Which format: `FLEET_LOG_FORMAT` if set to `json` or `text`, else JSON unless
/// standard output is a terminal.
pub fn json_wanted(setting: Option<&str>, terminal: bool) -> bool {
    match setting.map(str::trim) {
        Some(s) if s.eq_ignore_ascii_case("json") => true,
        Some(s) if s.eq_ignore_ascii_case("text") => false,
        _ => !terminal,
    }
}

/// The log filter: `RUST_LOG` (default `info`), with lapin silenced unless `RUST_LOG`
/// names it: lapin logs an ERROR for every connection that ends, clean closes included,
/// and a WARN for every message the broker returns (the event relay's probes of who
/// listens), while the services report their broker sessions themselves. So
/// `RUST_LOG=info` (compose, `make demo`) logs no ERROR on a clean shutdown.
fn filter_directives(rust_log: Option<&str>) -> String {
    let given = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    if given.contains("lapin") {
        given.to_owned()
    } else {
        format!("{given},lapin=off")
    }
}

/// Installs the process's logger (once; later calls do nothing).
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::new(filter_directives(
        std::env::var("RUST_LOG").ok().as_deref(),
    ));
    let terminal = std::io::stdout().is_terminal();
    let setting = std::env::var("FLEET_LOG_FORMAT").ok();
    if json_wanted(setting.as_deref(), terminal) {
        let service = std::env::args()
            .next()
            .and_then(|a| {
                std::path::Path::new(&a)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "fleet".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson { service })
            .try_init();
    } else {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_target(false)
            .with_ansi(terminal)
            .try_init();
    }
}

/// One flat JSON object per event: see the module's documentation.
struct FlatJson {
    service: String,
}

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        if let Ok(f) = FIELDS.read() {
            if let Some(f) = f.as_ref() {
                fields.extend(f.clone());
            }
        }
        // Outer spans first, so that an inner span's field of the same name wins.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(f) = ext.get::<FormattedFields<N>>() {
                    if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(f.as_str()) {
                        fields.extend(m);
                    }
                }
            }
        }
        event.record(&mut Fields(&mut fields));
        let message = fields.remove("message").unwrap_or_default();
        if meta.level() <= &tracing::Level::WARN {
            fields.insert("target".into(), meta.target().into());
        }
        // The same four first on every line, for a person reading the file too.
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let head = [
            ("ts", Value::from(ts)),
            ("level", Value::from(meta.level().as_str())),
            ("service", Value::from(self.service.as_str())),
            ("message", message),
        ];
        let mut line = String::from("{");
        let rest = fields.iter().map(|(k, v)| (k.as_str(), v));
        for (i, (k, v)) in head.iter().map(|(k, v)| (*k, v)).chain(rest).enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&Value::from(k).to_string());
            line.push(':');
            line.push_str(&v.to_string());
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

/// An event's fields as JSON values (numbers and booleans stay so).
struct Fields<'a>(&'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_unless_on_a_terminal_and_the_setting_wins() {
        assert!(json_wanted(None, false));
        assert!(!json_wanted(None, true));
        assert!(json_wanted(Some("JSON"), true));
        assert!(!json_wanted(Some("text"), false));
        // Anything else: the guess.
        assert!(json_wanted(Some("pretty"), false));
    }

    #[test]
    fn lapin_is_silenced_unless_named() {
        assert_eq!(filter_directives(None), "info,lapin=off");
        assert_eq!(filter_directives(Some("info")), "info,lapin=off");
        assert_eq!(filter_directives(Some(" ")), "info,lapin=off");
        assert_eq!(
            filter_directives(Some("debug,lapin=warn")),
            "debug,lapin=warn"
        );
    }
}
