//! Device mapping templates (normalization): loading and evaluation.
//!
//! A device mapping is a `CollectionContent` of `CalculatedContent`, `JsonPathContent`,
//! `IotJsonPathContent` or `IotCentralJsonPathContent` templates, in the IoMT FHIR Connector's
//! format, unchanged. Every template runs on every message; every token its
//! `typeMatchExpression` selects becomes one [`Measurement`].
//!
//! Evaluation scope (upstream `MeasurementExtractor` / `LegacyMeasurementExtractor`):
//! - `CalculatedContent`: expressions see the message root with `matchedToken` added;
//! - the legacy types: expressions see the matched token only;
//! - `IotJsonPathContent`: device id `$.SystemProperties.iothub-connection-device-id`, time
//!   `$.Properties.iothub-creation-time-utc`, else `$.SystemProperties.iothub-enqueuedtime`;
//! - `IotCentralJsonPathContent`: device id `$.deviceId`, time `$.enqueuedTime`.
//!
//! A message is atomic: if any template fails on it, it yields no measurements and every
//! error is reported, so that it can be dead-lettered whole and replayed after a fix.

use super::convert::{value_to_string, value_to_time};
use super::doc::{JsonTree, Node};
use super::expr::{Expr, ExprError, Language};
use super::json_pos::child;
use super::load::{
    coerce_bool, coerce_string, container, parse_text, required_string, root_entries, type_matches,
    Diag, LooseObject, TemplateError,
};
use super::measurement::Measurement;
use super::time::Timestamp;
use serde_json::Value;
use std::fmt;
use std::sync::LazyLock;

/// The four template types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTemplateKind {
    CalculatedContent,
    JsonPathContent,
    IotJsonPathContent,
    IotCentralJsonPathContent,
}

impl DeviceTemplateKind {
    /// Upstream's class name, used in error texts.
    pub fn class_name(self) -> &'static str {
        match self {
            DeviceTemplateKind::CalculatedContent => "CalculatedContentTemplate",
            DeviceTemplateKind::JsonPathContent => "JsonPathContentTemplate",
            DeviceTemplateKind::IotJsonPathContent => "IotJsonPathContentTemplate",
            DeviceTemplateKind::IotCentralJsonPathContent => "IotCentralJsonPathContentTemplate",
        }
    }

    fn from_type_name(t: &str) -> Option<Self> {
        // CalculatedContent and IotCentralJsonPathContent match only their exact name (any case).
        if type_matches(t, "CalculatedContent", true) {
            Some(DeviceTemplateKind::CalculatedContent)
        } else if type_matches(t, "IotCentralJsonPathContent", true) {
            Some(DeviceTemplateKind::IotCentralJsonPathContent)
        } else if type_matches(t, "IotJsonPathContent", false) {
            Some(DeviceTemplateKind::IotJsonPathContent)
        } else if type_matches(t, "JsonPathContent", false) {
            Some(DeviceTemplateKind::JsonPathContent)
        } else {
            None
        }
    }
}

/// One `values[]` entry.
#[derive(Debug, Clone)]
pub struct ValueTemplate {
    pub name: String,
    pub expr: Expr,
    pub required: bool,
}

/// A loaded device template.
#[derive(Debug, Clone)]
pub struct DeviceTemplate {
    pub kind: DeviceTemplateKind,
    pub type_name: String,
    pub type_match: Expr,
    /// `None` for the IoT types, whose device id and time are built in.
    pub device_id: Option<Expr>,
    pub timestamp: Option<Expr>,
    pub patient_id: Option<Expr>,
    pub encounter_id: Option<Expr>,
    pub correlation_id: Option<Expr>,
    pub values: Vec<ValueTemplate>,
    /// Line of the template in its file, for messages.
    pub line: usize,
    /// CalculatedContent only: the same expressions, scoped so that the matched token need
    /// not be copied into the message (see [`plan_direct`]); `None` when some expression could
    /// see `matchedToken` in a way only the real insertion reproduces.
    direct: Option<Direct>,
}

/// An expression and the document it runs on.
#[derive(Debug, Clone)]
struct Scoped {
    expr: Expr,
    /// Runs on the matched token (it was `$.matchedToken...`) rather than the message root.
    on_match: bool,
}

/// The expressions of a CalculatedContent template, each scoped.
#[derive(Debug, Clone)]
struct Direct {
    device_id: Option<Scoped>,
    timestamp: Option<Scoped>,
    patient_id: Option<Scoped>,
    encounter_id: Option<Scoped>,
    correlation_id: Option<Scoped>,
    values: Vec<Scoped>,
}

/// Upstream evaluates CalculatedContent expressions on a copy of the message with the matched
/// token added as `matchedToken`. Copying costs more than the whole rest of the evaluation, and
/// for the usual expressions it can be avoided with the same result:
/// - `$.matchedToken<rest>` is `$<rest>` on the matched token;
/// - a JSONPath that starts with a plain member of the root (`$.Body...`, no `..` anywhere, not
///   `$*`, `$[...`) never visits `matchedToken`, so it gives the same on the message itself.
///
/// Anything else (JMESPath, recursive descent, wildcards at the root) keeps the insertion.
fn plan_direct(t: &DeviceTemplate) -> Option<Direct> {
    fn scope(e: &Expr) -> Option<Scoped> {
        let Expr::JsonPath(_) = e else { return None };
        let src = e.source().trim();
        if let Some(rest) = src.strip_prefix("$.matchedToken") {
            if rest.is_empty() || rest.starts_with('.') || rest.starts_with('[') {
                let rewritten = format!("${rest}");
                if rewritten.contains("..") {
                    return None;
                }
                return Expr::compile(&rewritten, Language::JsonPath)
                    .ok()
                    .map(|expr| Scoped {
                        expr,
                        on_match: true,
                    });
            }
        }
        let root_member =
            src.starts_with("$.") && !src.starts_with("$.*") && !src.starts_with("$.matchedToken");
        (root_member && !src.contains("..")).then(|| Scoped {
            expr: e.clone(),
            on_match: false,
        })
    }
    let opt = |e: &Option<Expr>| -> Option<Option<Scoped>> {
        match e {
            None => Some(None),
            Some(e) => scope(e).map(Some),
        }
    };
    Some(Direct {
        device_id: opt(&t.device_id)?,
        timestamp: opt(&t.timestamp)?,
        patient_id: opt(&t.patient_id)?,
        encounter_id: opt(&t.encounter_id)?,
        correlation_id: opt(&t.correlation_id)?,
        values: t
            .values
            .iter()
            .map(|v| scope(&v.expr))
            .collect::<Option<Vec<_>>>()?,
    })
}

/// The expression to run and the document to run it on.
fn pick<'e, 'v, T>(
    orig: &'e Expr,
    scoped: Option<&'e Scoped>,
    root: &'v T,
    matched: &'v T,
) -> (&'e Expr, &'v T) {
    match scoped {
        Some(s) => (&s.expr, if s.on_match { matched } else { root }),
        None => (orig, root),
    }
}

/// A loaded device mapping: the templates that loaded, and every error found.
#[derive(Debug, Clone, Default)]
pub struct DeviceMapping {
    pub templates: Vec<DeviceTemplate>,
}

/// The outcome of loading a device mapping file.
#[derive(Debug, Clone)]
pub struct DeviceMappingLoad {
    /// Templates that loaded (all of them when `errors` is empty; the valid subset otherwise,
    /// which only the debugger may use, as upstream's validator does).
    pub mapping: DeviceMapping,
    pub errors: Vec<TemplateError>,
}

impl DeviceMappingLoad {
    /// `Ok` only when the whole mapping is valid (upstream refuses a mapping with any error).
    pub fn into_result(self) -> Result<DeviceMapping, Vec<TemplateError>> {
        if self.errors.is_empty() {
            Ok(self.mapping)
        } else {
            Err(self.errors)
        }
    }
}

/// Loads a device mapping from its JSON text.
pub fn load_device_mapping(text: &str) -> DeviceMappingLoad {
    let (root, idx) = match parse_text(text) {
        Ok(x) => x,
        Err(e) => {
            return DeviceMappingLoad {
                mapping: DeviceMapping::default(),
                errors: vec![e],
            }
        }
    };
    let mut d = Diag::new(&idx);
    let mut templates = Vec::new();
    if let Some(entries) = root_entries(&root, "CollectionContent", &mut d) {
        load_entries(entries, "/template", &mut templates, &mut d, 0);
    }
    DeviceMappingLoad {
        mapping: DeviceMapping { templates },
        errors: d.errors,
    }
}

fn load_entries(
    entries: &[Value],
    pointer: &str,
    out: &mut Vec<DeviceTemplate>,
    d: &mut Diag<'_>,
    depth: usize,
) {
    for (i, entry) in entries.iter().enumerate() {
        let p = format!("{pointer}/{i}");
        if depth == 0 {
            d.entry = Some(i);
        }
        let Some((tt, t)) = container(entry, &p) else {
            d.at_value(&p, "Expected an object with templateType and template.");
            continue;
        };
        let tt = tt.unwrap_or_default();
        if type_matches(&tt, "CollectionContent", false) {
            match t {
                Some((Value::Array(a), tp)) if depth < 8 => load_entries(a, &tp, out, d, depth + 1),
                Some((_, tp)) => d.at_value(&tp, "Expected an array for the template property value for template type CollectionContentTemplate."),
                None => d.at_value(&p, "Expected an array for the template property value for template type CollectionContentTemplate."),
            }
            continue;
        }
        let Some(kind) = DeviceTemplateKind::from_type_name(&tt) else {
            d.at_value(
                &child(&p, "templateType"),
                format!("No match found for template type {tt}."),
            );
            continue;
        };
        match t {
            Some((Value::Object(map), tp)) => {
                if let Some(t) = load_template(kind, map, tp, d) {
                    out.push(t);
                }
            }
            other => {
                let at = other.map(|(_, tp)| tp).unwrap_or(p);
                d.at_value(
                    &at,
                    format!(
                        "Expected an object for the template property value for template type {}.",
                        kind.class_name()
                    ),
                );
            }
        }
    }
    if depth == 0 {
        d.entry = None;
    }
}

/// Reads one expression member. CalculatedContent accepts `"expr"` or `{value, language}`;
/// the legacy types accept only strings. Empty or blank expressions count as absent.
fn read_expr(
    o: &mut LooseObject<'_>,
    name: &str,
    pascal: &str,
    kind: DeviceTemplateKind,
    default_lang: Language,
    d: &mut Diag<'_>,
) -> Option<Expr> {
    let (v, p) = o.get_non_null(name)?;
    compile_expr_value(v, &p, pascal, kind, default_lang, d)
}

fn compile_expr_value(
    v: &Value,
    p: &str,
    pascal: &str,
    kind: DeviceTemplateKind,
    default_lang: Language,
    d: &mut Diag<'_>,
) -> Option<Expr> {
    let (text, lang, text_ptr) = match v {
        Value::Object(map) if kind == DeviceTemplateKind::CalculatedContent => {
            let mut eo = LooseObject::new(map, p.to_owned());
            let text = eo.get_non_null("value").and_then(|(v, _)| coerce_string(v));
            let lang = match eo.get_non_null("language") {
                None => default_lang,
                Some((lv, lp)) => match coerce_string(lv).as_deref().and_then(Language::parse) {
                    Some(l) => l,
                    None => {
                        d.at_value(&lp, format!("Invalid expression language {lv} for '{pascal}' (expected JsonPath or JmesPath)."));
                        return None;
                    }
                },
            };
            eo.finish_strict("TemplateExpression", d);
            (text?, lang, child(p, "value"))
        }
        Value::Object(_) | Value::Array(_) => {
            d.at_value(
                p,
                format!(
                    "'{pascal}' must be a string expression for template type {}.",
                    kind.class_name()
                ),
            );
            return None;
        }
        other => (coerce_string(other)?, default_lang, p.to_owned()),
    };
    if text.trim().is_empty() {
        return None;
    }
    match Expr::compile(&text, lang) {
        Ok(e) => Some(e),
        Err(e) => {
            let l = if lang == Language::JsonPath {
                "JSONPath"
            } else {
                "JMESPath"
            };
            d.at_value(
                &text_ptr,
                format!("Invalid {l} expression '{text}' for '{pascal}': {e}"),
            );
            None
        }
    }
}

fn load_template(
    kind: DeviceTemplateKind,
    map: &serde_json::Map<String, Value>,
    pointer: String,
    d: &mut Diag<'_>,
) -> Option<DeviceTemplate> {
    let errors_before = d.errors.len();
    let line = d.idx.value(&pointer).map(|p| p.line).unwrap_or(0);
    let mut o = LooseObject::new(map, pointer.clone());
    let calc = kind == DeviceTemplateKind::CalculatedContent;
    let default_lang = if calc {
        match o.get_non_null("defaultExpressionLanguage") {
            None => Language::JsonPath,
            Some((v, p)) => coerce_string(v).as_deref().and_then(Language::parse).unwrap_or_else(|| {
                d.at_value(&p, format!("Invalid defaultExpressionLanguage {v} (expected JsonPath or JmesPath)."));
                Language::JsonPath
            }),
        }
    } else {
        Language::JsonPath
    };
    let type_name = required_string(&mut o, "typeName", "TypeName", d);
    if matches!(&type_name, Some(t) if t.trim().is_empty()) {
        d.at_value(
            &child(&pointer, "typeName"),
            "'TypeName' must not be empty.",
        );
    }
    let req_expr =
        |o: &mut LooseObject<'_>, name: &str, pascal: &str, d: &mut Diag<'_>| -> Option<Expr> {
            let errors_before = d.errors.len();
            if o.get_non_null(name).is_none() {
                d.at_value(
                    &pointer,
                    format!("Required property '{pascal}' not found in JSON."),
                );
                return None;
            }
            let e = read_expr(o, name, pascal, kind, default_lang, d);
            if e.is_none() && d.errors.len() == errors_before {
                d.at_value(
                    &child(&pointer, name),
                    format!("'{pascal}' must not be empty."),
                );
            }
            e
        };
    let type_match = req_expr(&mut o, "typeMatchExpression", "TypeMatchExpression", d);
    let builtin_ids = matches!(
        kind,
        DeviceTemplateKind::IotJsonPathContent | DeviceTemplateKind::IotCentralJsonPathContent
    );
    let (device_id, timestamp) = if builtin_ids {
        // Accepted (the classes inherit them) but ignored: the built-ins win, as upstream.
        let _ = read_expr(
            &mut o,
            "deviceIdExpression",
            "DeviceIdExpression",
            kind,
            default_lang,
            d,
        );
        let _ = read_expr(
            &mut o,
            "timestampExpression",
            "TimestampExpression",
            kind,
            default_lang,
            d,
        );
        (None, None)
    } else {
        (
            req_expr(&mut o, "deviceIdExpression", "DeviceIdExpression", d),
            req_expr(&mut o, "timestampExpression", "TimestampExpression", d),
        )
    };
    let patient_id = read_expr(
        &mut o,
        "patientIdExpression",
        "PatientIdExpression",
        kind,
        default_lang,
        d,
    );
    let encounter_id = read_expr(
        &mut o,
        "encounterIdExpression",
        "EncounterIdExpression",
        kind,
        default_lang,
        d,
    );
    let correlation_id = read_expr(
        &mut o,
        "correlationIdExpression",
        "CorrelationIdExpression",
        kind,
        default_lang,
        d,
    );
    let mut values = Vec::new();
    match o.get_non_null("values") {
        None => {} // A missing `values` means none (upstream throws here; MedTech allows it).
        Some((Value::Array(items), vp)) => {
            for (i, item) in items.iter().enumerate() {
                let ip = format!("{vp}/{i}");
                let Value::Object(m) = item else {
                    d.at_value(&ip, "Expected an object in values.");
                    continue;
                };
                let mut vo = LooseObject::new(m, ip.clone());
                let name = required_string(&mut vo, "valueName", "ValueName", d);
                let present = vo.get_non_null("valueExpression").is_some();
                if !present {
                    d.at_value(
                        &ip,
                        "Required property 'ValueExpression' not found in JSON.",
                    );
                }
                let expr = read_expr(
                    &mut vo,
                    "valueExpression",
                    "ValueExpression",
                    kind,
                    default_lang,
                    d,
                );
                if present && expr.is_none() && !d.errors.iter().any(|e| e.pointer.starts_with(&ip))
                {
                    d.at_value(
                        &child(&ip, "valueExpression"),
                        "'ValueExpression' must not be empty.",
                    );
                }
                let required = match vo.get_non_null("required") {
                    None => false,
                    Some((rv, rp)) => coerce_bool(rv).unwrap_or_else(|| {
                        d.at_value(
                            &rp,
                            format!("Could not convert {rv} to a boolean for 'Required'."),
                        );
                        false
                    }),
                };
                vo.finish_strict(
                    if calc {
                        "CalculatedFunctionValueExpression"
                    } else {
                        "JsonPathValueExpression"
                    },
                    d,
                );
                if let (Some(name), Some(expr)) = (name, expr) {
                    if name.trim().is_empty() {
                        d.at_value(&child(&ip, "valueName"), "'ValueName' must not be empty.");
                    } else {
                        values.push(ValueTemplate {
                            name,
                            expr,
                            required,
                        });
                    }
                }
            }
        }
        Some((_, vp)) => d.at_value(&vp, "'Values' must be an array."),
    }
    o.finish_strict(kind.class_name(), d);
    if d.errors.len() > errors_before {
        return None;
    }
    let mut t = DeviceTemplate {
        kind,
        type_name: type_name?,
        type_match: type_match?,
        device_id,
        timestamp,
        patient_id,
        encounter_id,
        correlation_id,
        values,
        line,
        direct: None,
    };
    if calc {
        t.direct = plan_direct(&t);
    }
    Some(t)
}

// === evaluation ===

/// Why a message could not be normalized by one template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizeError {
    /// Index of the template in the mapping (flattened order).
    pub template_index: usize,
    pub type_name: String,
    /// A stable, low-cardinality reason code (for metrics and the dead-letter store).
    pub reason: NormalizeReason,
    pub message: String,
}

/// Reason codes of normalization failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormalizeReason {
    /// A required value, device id, timestamp or correlation id is missing or empty.
    MissingRequired,
    /// A timestamp could not be read.
    BadTimestamp,
    /// A value could not be read as a string (object/array), or similar conversion failure.
    BadValue,
    /// An expression failed (several tokens for a single select, a JMESPath function error).
    Expression,
    /// The message root is not what the template type needs.
    BadMessage,
}

impl NormalizeReason {
    pub fn as_str(self) -> &'static str {
        match self {
            NormalizeReason::MissingRequired => "missing_required",
            NormalizeReason::BadTimestamp => "bad_timestamp",
            NormalizeReason::BadValue => "bad_value",
            NormalizeReason::Expression => "expression_error",
            NormalizeReason::BadMessage => "bad_message",
        }
    }
}

impl fmt::Display for NormalizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "template {} ({}): {}",
            self.template_index, self.type_name, self.message
        )
    }
}

const MATCHED_TOKEN: &str = "matchedToken";

static IOT_DEVICE: LazyLock<Expr> =
    LazyLock::new(|| builtin("$.SystemProperties.iothub-connection-device-id"));
static IOT_CREATED: LazyLock<Expr> =
    LazyLock::new(|| builtin("$.Properties.iothub-creation-time-utc"));
static IOT_ENQUEUED: LazyLock<Expr> =
    LazyLock::new(|| builtin("$.SystemProperties.iothub-enqueuedtime"));
static CENTRAL_DEVICE: LazyLock<Expr> = LazyLock::new(|| builtin("$.deviceId"));
static CENTRAL_TIME: LazyLock<Expr> = LazyLock::new(|| builtin("$.enqueuedTime"));

fn builtin(path: &str) -> Expr {
    Expr::compile(path, Language::JsonPath).expect("built-in JSONPath expressions are valid")
}

type EvalResult<T> = Result<T, (NormalizeReason, String)>;

impl DeviceMapping {
    /// Normalizes one message (the event envelope `{Body, Properties, SystemProperties}`, or a
    /// bare document as upstream's tests feed it). `ingestion_time` is when the gateway
    /// received it. All-or-nothing: any error means no measurements.
    pub fn normalize(
        &self,
        mut message: Value,
        ingestion_time: Timestamp,
    ) -> Result<Vec<Measurement>, Vec<NormalizeError>> {
        self.normalize_tree(&mut message, ingestion_time)
    }

    /// Normalizes one message given as JSON text: exactly
    /// `normalize(serde_json::from_str(text)?, ingestion_time)` (same measurements, same
    /// errors, same parse errors), faster: the message is parsed into a borrowed [`Node`] (no
    /// map, no `String` per key or unescaped string). `Err` is the parse error.
    pub fn normalize_text(
        &self,
        text: &str,
        ingestion_time: Timestamp,
    ) -> Result<Result<Vec<Measurement>, Vec<NormalizeError>>, serde_json::Error> {
        Ok(self.normalize_node(Node::parse(text)?, ingestion_time))
    }

    /// [`DeviceMapping::normalize`] on a message parsed with [`Node::parse`]: the same result
    /// as on the `serde_json::Value` of the same text. Mappings with a JMESPath expression
    /// run on that `Value` (converted from the node), the others on the node itself.
    pub fn normalize_node(
        &self,
        mut message: Node<'_>,
        ingestion_time: Timestamp,
    ) -> Result<Vec<Measurement>, Vec<NormalizeError>> {
        if self.templates.iter().all(DeviceTemplate::runs_on_node) {
            self.normalize_tree(&mut message, ingestion_time)
        } else {
            let mut value = message.to_value();
            drop(message);
            self.normalize_tree(&mut value, ingestion_time)
        }
    }

    /// This mapping with the CalculatedContent shortcut ([`plan_direct`]) turned off, so that
    /// every CalculatedContent expression runs on the message with `matchedToken` inserted.
    #[cfg(test)]
    pub(crate) fn without_direct(&self) -> DeviceMapping {
        let mut m = self.clone();
        for t in &mut m.templates {
            t.direct = None;
        }
        m
    }

    /// [`DeviceMapping::normalize_node`] without the JMESPath fallback to `Value` (JMESPath
    /// expressions then run through the node's own conversion).
    #[cfg(test)]
    pub(crate) fn normalize_node_only(
        &self,
        mut message: Node<'_>,
        ingestion_time: Timestamp,
    ) -> Result<Vec<Measurement>, Vec<NormalizeError>> {
        self.normalize_tree(&mut message, ingestion_time)
    }

    fn normalize_tree<T: JsonTree>(
        &self,
        message: &mut T,
        ingestion_time: Timestamp,
    ) -> Result<Vec<Measurement>, Vec<NormalizeError>> {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (i, t) in self.templates.iter().enumerate() {
            if let Err((reason, message)) = t.extract(message, ingestion_time, &mut out) {
                errors.push(NormalizeError {
                    template_index: i,
                    type_name: t.type_name.clone(),
                    reason,
                    message,
                });
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}

impl DeviceTemplate {
    /// Whether [`DeviceMapping::normalize_text`] can run this template on a borrowed
    /// [`Node`] without converting it (no JMESPath expression).
    fn runs_on_node(&self) -> bool {
        let jsonpath = |e: &Expr| e.language() == Language::JsonPath;
        jsonpath(&self.type_match)
            && [
                &self.device_id,
                &self.timestamp,
                &self.patient_id,
                &self.encounter_id,
                &self.correlation_id,
            ]
            .into_iter()
            .flatten()
            .all(jsonpath)
            && self.values.iter().all(|v| jsonpath(&v.expr))
    }

    fn extract<T: JsonTree>(
        &self,
        root: &mut T,
        ingestion_time: Timestamp,
        out: &mut Vec<Measurement>,
    ) -> EvalResult<()> {
        let type_match_error = |e: ExprError| {
            (
                NormalizeReason::Expression,
                format!("typeMatchExpression '{}': {e}", self.type_match.source()),
            )
        };
        // JSONPath tokens are borrowed from the message; JMESPath results are owned.
        let owned: Vec<T>;
        let matches: Vec<&T> = match &self.type_match {
            Expr::JsonPath(p) => p
                .select_all(&*root)
                .map_err(|e| type_match_error(e.into()))?,
            Expr::JmesPath(j) => {
                owned = T::jmes_all(j, &*root).map_err(|e| type_match_error(e.into()))?;
                owned.iter().collect()
            }
        };
        if self.kind != DeviceTemplateKind::CalculatedContent {
            for m in matches {
                out.push(self.measurement(m, m, None, ingestion_time)?);
            }
            return Ok(());
        }
        if let Some(direct) = &self.direct {
            if !root.is_object() {
                return Err((
                    NormalizeReason::BadMessage,
                    "the message must be a JSON object for CalculatedContent templates".into(),
                ));
            }
            for m in matches {
                out.push(self.measurement(root, m, Some(direct), ingestion_time)?);
            }
            return Ok(());
        }
        let matches: Vec<T> = matches.into_iter().cloned().collect();
        for m in matches {
            // Evaluate on the root with `matchedToken` added, without cloning the root.
            let Some(previous) = root.insert_member(MATCHED_TOKEN, m) else {
                return Err((
                    NormalizeReason::BadMessage,
                    "the message must be a JSON object for CalculatedContent templates".into(),
                ));
            };
            let result = self.measurement(root, root, None, ingestion_time);
            root.restore_member(MATCHED_TOKEN, previous);
            out.push(result?);
        }
        Ok(())
    }

    /// One measurement. `root` and `matched` are the documents expressions run on (the same
    /// one unless `direct` scopes them).
    fn measurement<T: JsonTree>(
        &self,
        root: &T,
        matched: &T,
        direct: Option<&Direct>,
        ingestion_time: Timestamp,
    ) -> EvalResult<Measurement> {
        // At most two time expressions (IoT Hub: creation time, else enqueued time): kept in
        // an array, not a Vec, as this runs once per measurement.
        type TimeExprs<'e, 'v, T> = [Option<(&'e Expr, &'v T)>; 2];
        let (device_expr, device_scope, time_exprs): (&Expr, &T, TimeExprs<'_, '_, T>) =
            match self.kind {
                DeviceTemplateKind::IotJsonPathContent => (
                    &IOT_DEVICE,
                    root,
                    [Some((&IOT_CREATED, root)), Some((&IOT_ENQUEUED, root))],
                ),
                DeviceTemplateKind::IotCentralJsonPathContent => {
                    (&CENTRAL_DEVICE, root, [Some((&CENTRAL_TIME, root)), None])
                }
                _ => {
                    let dev = self.device_id.as_ref().ok_or((
                        NormalizeReason::BadMessage,
                        "no deviceIdExpression".to_owned(),
                    ))?;
                    let (de, ds) = pick(
                        dev,
                        direct.and_then(|d| d.device_id.as_ref()),
                        root,
                        matched,
                    );
                    let time = self
                        .timestamp
                        .as_ref()
                        .map(|t| pick(t, direct.and_then(|d| d.timestamp.as_ref()), root, matched));
                    (de, ds, [time, None])
                }
            };
        let device_id = required_text(device_expr, device_scope, "DeviceIdExpression")?;
        let mut occurrence = None;
        for (e, scope) in time_exprs.iter().flatten() {
            if let Some(tok) = select_one(e, *scope, "TimestampExpression")? {
                match value_to_time(&*tok) {
                    Ok(Some(t)) => {
                        occurrence = Some(t);
                        break;
                    }
                    Ok(None) => continue,
                    Err(err) => {
                        return Err((
                            NormalizeReason::BadTimestamp,
                            format!("timestamp from '{}': {err}", e.source()),
                        ));
                    }
                }
            }
        }
        let occurrence_time = occurrence.ok_or_else(|| {
            let srcs: Vec<&str> = time_exprs
                .iter()
                .flatten()
                .map(|(e, _)| e.source())
                .collect();
            (
                NormalizeReason::MissingRequired,
                format!(
                    "Unable to extract required value for [TimestampExpression] using {}",
                    srcs.join(",")
                ),
            )
        })?;
        let correlation_id = match &self.correlation_id {
            Some(e) => {
                let (e, scope) = pick(
                    e,
                    direct.and_then(|d| d.correlation_id.as_ref()),
                    root,
                    matched,
                );
                Some(required_text(e, scope, "CorrelationIdExpression")?)
            }
            None => None,
        };
        let mut properties = Vec::with_capacity(self.values.len());
        for (i, v) in self.values.iter().enumerate() {
            let (expr, scope) = pick(&v.expr, direct.and_then(|d| d.values.get(i)), root, matched);
            match select_one(expr, scope, &v.name)? {
                Some(tok) => match value_to_string(&*tok) {
                    Ok(Some(s)) if !(v.required && s.trim().is_empty()) => {
                        properties.push((v.name.clone(), s))
                    }
                    Ok(_) if v.required => {
                        return Err(missing(&v.name, &v.expr));
                    }
                    Ok(_) => {}
                    Err(err) if v.required => {
                        return Err((
                            NormalizeReason::BadValue,
                            format!("value [{}] from '{}': {err}", v.name, v.expr.source()),
                        ));
                    }
                    Err(_) => {} // Not required: silently dropped, as upstream.
                },
                None if v.required => return Err(missing(&v.name, &v.expr)),
                None => {}
            }
        }
        Ok(Measurement {
            type_name: self.type_name.clone(),
            occurrence_time,
            ingestion_time,
            device_id,
            patient_id: {
                let e = self
                    .patient_id
                    .as_ref()
                    .map(|e| pick(e, direct.and_then(|d| d.patient_id.as_ref()), root, matched));
                optional_text(
                    e.map(|x| x.0),
                    e.map_or(root, |x| x.1),
                    "PatientIdExpression",
                )?
            },
            encounter_id: {
                let e = self.encounter_id.as_ref().map(|e| {
                    pick(
                        e,
                        direct.and_then(|d| d.encounter_id.as_ref()),
                        root,
                        matched,
                    )
                });
                optional_text(
                    e.map(|x| x.0),
                    e.map_or(root, |x| x.1),
                    "EncounterIdExpression",
                )?
            },
            correlation_id,
            properties,
        })
    }
}

fn missing(name: &str, e: &Expr) -> (NormalizeReason, String) {
    (
        NormalizeReason::MissingRequired,
        format!(
            "Unable to extract required value for [{name}] using {}",
            e.source()
        ),
    )
}

fn select_one<'a, T: JsonTree>(
    e: &Expr,
    scope: &'a T,
    what: &str,
) -> EvalResult<Option<std::borrow::Cow<'a, T>>> {
    e.select_one(scope).map_err(|err| {
        (
            NormalizeReason::Expression,
            format!("[{what}] '{}': {err}", e.source()),
        )
    })
}

fn required_text<T: JsonTree>(e: &Expr, scope: &T, what: &str) -> EvalResult<String> {
    let tok = select_one(e, scope, what)?;
    match tok.as_deref().map(value_to_string) {
        Some(Ok(Some(s))) if !s.trim().is_empty() => Ok(s),
        Some(Err(err)) => Err((
            NormalizeReason::BadValue,
            format!("[{what}] '{}': {err}", e.source()),
        )),
        _ => Err(missing(what, e)),
    }
}

fn optional_text<T: JsonTree>(
    e: Option<&Expr>,
    scope: &T,
    what: &str,
) -> EvalResult<Option<String>> {
    let Some(e) = e else { return Ok(None) };
    match select_one(e, scope, what)?.as_deref().map(value_to_string) {
        Some(Ok(Some(s))) if !s.trim().is_empty() => Ok(Some(s)),
        Some(Err(err)) => Err((
            NormalizeReason::BadValue,
            format!("[{what}] '{}': {err}", e.source()),
        )),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn corpus() -> Option<std::path::PathBuf> {
        let here = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        here.ancestors()
            .map(|a| a.join("shared/conformance/iomt-fhir"))
            .find(|p| p.is_dir())
    }

    /// The copy-free evaluation of CalculatedContent gives exactly what the upstream-style
    /// insertion of `matchedToken` gives, on every CalculatedContent template and message we have.
    #[test]
    fn direct_scoping_equals_matched_token_insertion() {
        let t = Timestamp::parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
        let mut pairs: Vec<(String, Value)> = Vec::new();
        let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let vitals = std::fs::read_to_string(repo.join("templates/vitals.device.json")).unwrap();
        for ex in ["heartrate", "spo2", "bloodpressure", "bodytemperature"] {
            let m = std::fs::read_to_string(repo.join(format!("templates/examples/{ex}.msg.json")))
                .unwrap();
            pairs.push((vitals.clone(), serde_json::from_str(&m).unwrap()));
        }
        if let Some(c) = corpus() {
            let read = |n: &str| {
                let s = std::fs::read_to_string(c.join(n)).unwrap();
                s.strip_prefix('\u{feff}').unwrap_or(&s).to_owned()
            };
            for (d, m) in [
                ("doc-heartrate.device.json", "doc-heartrate.msg.json"),
                (
                    "doc-heartrate.device.json",
                    "doc-heartrate-array-body.msg.json",
                ),
                (
                    "doc-bloodpressure.device.json",
                    "doc-bloodpressure.msg.json",
                ),
                (
                    "doc-multiple-matches-parent-scope.device.json",
                    "doc-multiple-matches-parent-scope.msg.json",
                ),
                (
                    "doc-multiple-types-one-message.device.json",
                    "doc-multiple-types-one-message.msg.json",
                ),
                (
                    "doc-transform-jmespath-multiply.device.json",
                    "doc-transform-jmespath-multiply.msg.json",
                ),
            ] {
                pairs.push((read(d), serde_json::from_str(&read(m)).unwrap()));
            }
            pairs.push((read("device-jsonpath-hr-steps.json"), json!({"heartrate": "60", "steps": "2", "device": "abc", "date": "2024-01-01T10:00:00Z"})));
        }
        let mut direct_used = 0;
        for (template, msg) in pairs {
            let fast = load_device_mapping(&template).into_result().unwrap();
            direct_used += fast.templates.iter().filter(|t| t.direct.is_some()).count();
            let mut slow = fast.clone();
            for t in &mut slow.templates {
                t.direct = None;
            }
            assert_eq!(fast.normalize(msg.clone(), t), slow.normalize(msg, t));
        }
        assert!(direct_used > 0, "the shortcut was never exercised");
    }

    #[test]
    fn scoping_rules() {
        let text = r#"{"templateType":"CollectionContent","template":[
          {"templateType":"CalculatedContent","template":{"typeName":"a","typeMatchExpression":"$..[?(@hr)]",
            "deviceIdExpression":"$.Body.deviceId","timestampExpression":"$.matchedToken.t","values":[]}},
          {"templateType":"CalculatedContent","template":{"typeName":"b","typeMatchExpression":"$..[?(@hr)]",
            "deviceIdExpression":"$..deviceId","timestampExpression":"$.matchedToken.t","values":[]}},
          {"templateType":"CalculatedContent","template":{"typeName":"c","typeMatchExpression":"$..[?(@hr)]",
            "deviceIdExpression":{"value":"matchedToken.d","language":"JmesPath"},"timestampExpression":"$.matchedToken.t","values":[]}}]}"#;
        let m = load_device_mapping(text).into_result().unwrap();
        assert!(
            m.templates[0].direct.is_some(),
            "a plain root member and $.matchedToken are scoped"
        );
        assert!(
            m.templates[1].direct.is_none(),
            "recursive descent from the root could see matchedToken"
        );
        assert!(
            m.templates[2].direct.is_none(),
            "JMESPath keeps the insertion"
        );
    }
}
