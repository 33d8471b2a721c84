//! `iomt-agent map`: the offline mapping debugger (MedTech's portal debugger, on the command
//! line). Reads messages, prints one JSON document with the measurements, the Observations
//! and the errors of the whole batch.

use super::{EXIT_FAILED, EXIT_TEMPLATE};
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use iomt_agent::mapping::{
    load_device_mapping, load_fhir_mapping, FhirMapping, Measurement, TemplateError, Timestamp,
};
use serde_json::{json, Value};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Map device messages with IoMT mapping templates and print what the connector would make of
/// them, without a FHIR server.
///
/// INPUT is a file, or `-` for standard input (the default when no INPUT is given). A file
/// may hold one event envelope `{"Body": ..., "Properties": ..., "SystemProperties": ...}`, one
/// bare message body (it is wrapped as `{"Body": ...}`), or a JSON array of either. All inputs
/// of one invocation form one batch: readings of one device, type and period group into one
/// Observation.
///
/// Output (stdout): one JSON document `{"measurements": [...], "observations": [...],
/// "errors": [...]}`. Measurements use the normalized-message shape the connector writes to
/// its normalized event hub (Type, OccurrenceTimeUtc, IngestionTimeUtc, DeviceId, PatientId,
/// EncounterId, CorrelationId, Properties). With --fhir-mapping, observations are the FHIR R4
/// Observations the groups produce; Patient and Device ids are resolved offline as the
/// connector's Create mode would (deterministic ids), so the output is reproducible.
///
/// Exit status: 0 when every message mapped; 1 when any message failed (each error names
/// the input, the template and the reason); 2 when a mapping file failed to load (every load
/// error is printed, with line and column).
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct MapArgs {
    /// Device mapping template (CollectionContent JSON).
    #[arg(long, value_name = "FILE")]
    device_mapping: PathBuf,
    /// FHIR mapping template (CollectionFhir JSON); without it only measurements are printed.
    #[arg(long, value_name = "FILE")]
    fhir_mapping: Option<PathBuf>,
    /// How Patient and Device references are resolved offline: `create` uses the Create mode's
    /// deterministic ids (sha256); `none` uses the message's device and patient ids as they are.
    #[arg(long, value_enum, default_value_t = IdentityMode::Create)]
    identity: IdentityMode,
    /// Ingestion time of every message (RFC 3339), also used as the Observations' `issued`.
    /// Default: the envelope's enqueued time when it has one, else now.
    #[arg(long, value_name = "TIME")]
    ingested_at: Option<String>,
    /// Messages (files, or - for stdin).
    #[arg(value_name = "INPUT")]
    inputs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IdentityMode {
    Create,
    None,
}

fn load_error_json(file: &Path, e: &TemplateError) -> Value {
    json!({
        "stage": "load",
        "file": file.display().to_string(),
        "line": e.pos.line,
        "column": e.pos.column,
        "pointer": e.pointer,
        "template": e.entry,
        "reason": e.message,
    })
}

/// One message of the batch, with a label saying where it came from.
struct Input {
    label: String,
    index: usize,
    envelope: Value,
}

fn is_envelope(v: &Value) -> bool {
    match v.as_object() {
        Some(m) => {
            m.contains_key("Body")
                && m.keys()
                    .all(|k| matches!(k.as_str(), "Body" | "Properties" | "SystemProperties"))
        }
        None => false,
    }
}

fn wrap(v: Value) -> Value {
    if is_envelope(&v) {
        v
    } else {
        json!({ "Body": v })
    }
}

fn read_inputs(paths: &[PathBuf]) -> Result<Vec<Input>> {
    let paths: Vec<PathBuf> = if paths.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        paths.to_vec()
    };
    let mut out = Vec::new();
    for p in &paths {
        let (name, text) = if p.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading standard input")?;
            ("<stdin>".to_owned(), s)
        } else {
            let s =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            (p.display().to_string(), s)
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let v: Value = serde_json::from_str(text).with_context(|| format!("{name} is not JSON"))?;
        match v {
            Value::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    out.push(Input {
                        label: format!("{name}[{i}]"),
                        index: out.len(),
                        envelope: wrap(item),
                    });
                }
            }
            other => out.push(Input {
                label: name.clone(),
                index: out.len(),
                envelope: wrap(other),
            }),
        }
    }
    Ok(out)
}

fn enqueued_time(envelope: &Value) -> Option<Timestamp> {
    let sp = envelope.get("SystemProperties")?;
    [
        "x-opt-enqueued-time",
        "iothub-enqueuedtime",
        "EnqueuedTimeUtc",
    ]
    .iter()
    .find_map(|k| {
        sp.get(*k)
            .and_then(Value::as_str)
            .and_then(iomt_agent::mapping::convert::parse_time)
    })
}

pub fn run(args: MapArgs) -> Result<ExitCode> {
    let device_text = std::fs::read_to_string(&args.device_mapping)
        .with_context(|| format!("reading device mapping {}", args.device_mapping.display()))?;
    let mut load_errors = Vec::new();
    let device = load_device_mapping(&device_text);
    for e in &device.errors {
        load_errors.push(load_error_json(&args.device_mapping, e));
    }
    let mut fhir: Option<FhirMapping> = None;
    if let Some(f) = &args.fhir_mapping {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading FHIR mapping {}", f.display()))?;
        let l = load_fhir_mapping(&text);
        for e in &l.errors {
            load_errors.push(load_error_json(f, e));
        }
        fhir = Some(l.mapping);
    }
    if !load_errors.is_empty() {
        for e in &load_errors {
            eprintln!(
                "{}:{}:{}: {}",
                e["file"].as_str().unwrap_or_default(),
                e["line"],
                e["column"],
                e["reason"].as_str().unwrap_or_default()
            );
        }
        print_doc(&[], &[], &load_errors)?;
        return Ok(ExitCode::from(EXIT_TEMPLATE));
    }
    let fixed_time = match &args.ingested_at {
        Some(t) => Some(
            iomt_agent::mapping::convert::parse_time(t).with_context(|| {
                format!(
                    "--ingested-at {t:?} is not a time (use RFC 3339, e.g. 2024-01-01T10:00:00Z)"
                )
            })?,
        ),
        None => None,
    };
    let now = Timestamp::from_datetime(chrono::Utc::now());
    let inputs = read_inputs(&args.inputs)?;
    let mut measurements: Vec<Measurement> = Vec::new();
    let mut measurement_inputs: Vec<usize> = Vec::new();
    let mut errors = Vec::new();
    for input in inputs {
        let t = fixed_time
            .or_else(|| enqueued_time(&input.envelope))
            .unwrap_or(now);
        match device.mapping.normalize(input.envelope, t) {
            Ok(ms) => {
                measurement_inputs.extend(std::iter::repeat_n(input.index, ms.len()));
                measurements.extend(ms);
            }
            Err(es) => {
                for e in es {
                    errors.push(json!({
                        "stage": "normalize",
                        "input": input.index,
                        "source": input.label,
                        "template": e.template_index,
                        "typeName": e.type_name,
                        "reason": e.reason.as_str(),
                        "message": e.message,
                    }));
                }
            }
        }
    }
    let observations = match &fhir {
        Some(f) => super::transform_offline(
            f,
            &measurements,
            &measurement_inputs,
            args.identity == IdentityMode::Create,
            fixed_time.unwrap_or(now),
            &mut errors,
        ),
        None => Vec::new(),
    };
    let ms: Vec<Value> = measurements
        .iter()
        .map(Measurement::to_normalized_json)
        .collect();
    print_doc(&ms, &observations, &errors)?;
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

fn print_doc(measurements: &[Value], observations: &[Value], errors: &[Value]) -> Result<()> {
    let doc =
        json!({ "measurements": measurements, "observations": observations, "errors": errors });
    let mut out = serde_json::to_string_pretty(&doc)?;
    out.push('\n');
    use std::io::Write;
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .context("writing standard output")?;
    Ok(())
}
