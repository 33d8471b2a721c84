//! Grouping: a batch of normalized measurements → observation groups, one per future
//! Observation (upstream `MeasurementFhirImportService.ParseEventData` and
//! `MeasurementObservationGroupFactory`; semantics doc §3).
//!
//! Steps, in upstream order:
//! 1. **Batch group** by `{DeviceId, Type, PatientId, EncounterId, CorrelationId}` (message
//!    values, case-sensitive). As upstream's string key `"{d}-{t}-{p}-{e}-{c}"` does, a missing
//!    and an empty patient/encounter/correlation id fall in the same group; unlike it, the key is
//!    structural, so `"a-b"`+`"c"` and `"a"`+`"b-c"` are not merged.
//! 2. **Dedup**: within a batch group, measurements with an identical `OccurrenceTimeUtc` (tick
//!    resolution) keep the one with the latest `IngestionTimeUtc`. On an ingestion-time tie the
//!    earliest in input order wins: upstream uses a stable `OrderByDescending(...).First()`.
//! 3. **Split** by the FHIR template's `periodInterval` (see [`PeriodInterval`]):
//!    Single → one group per distinct timestamp, boundary `(t, t)`; Hourly / Daily → UTC hour /
//!    day, boundary `[start, start + 1h/1d − 1 tick]`; CorrelationId → the whole batch group,
//!    boundary `[min, max]` of the occurrence times, a blank correlation id being an error.
//!    The identifier segment is `{start:yyyyMMddHHmmssZ}.{end:…}` for time groups (seconds:
//!    two Single readings in the same second get two groups with the *same* identifier, and the
//!    FHIR side then merges the second into the first, exactly as upstream) and the correlation
//!    id for correlation groups.
//! 4. **Values**: per property name, `(time, value)` sorted by time. An identical time keeps the
//!    first value added (upstream `SortedSet` compares by time only).
//!
//! Where the MedTech rule "periodInterval only applies to SampledData" lives: the caller's
//! `period_of` decides the interval per type, and [`effective_period_interval`] is the helper
//! it should use; it forces Single for templates with a Quantity, String or CodeableConcept
//! value or component (upstream OSS would apply Hourly to a Quantity and then fail on the
//! second reading).
//!
//! Implementation: batch keys through a hash map (one pass), batch groups sorted by key, each
//! one's indices sorted by `(time, index)` so that the dedup winners and the windows come out of
//! one walk; groups are spans over two shared index vectors ([`GroupView`]s, used by the
//! batch's text path) and only [`group_measurements`] copies them into [`ObservationGroup`]s.
//! The first implementation (`BTreeMap`s) is kept as a test oracle (`reference`, `spans_tests`).
//!
//! Invariants: pure (no I/O, no clock); never panics; output is deterministic: groups are
//! sorted by key `(device, type, patient, encounter, correlation)` then by start, errors by key.
//! Upstream processes groups in arrival order instead; the only visible effect is which of two
//! same-second Single readings is merged last (here: the later reading wins).

use std::collections::BTreeMap;

use crate::mapping::fhir_model::{CodeValueFhirTemplate, FhirValueTemplate, PeriodInterval};
use crate::mapping::time::TICKS_PER_SECOND;
use crate::mapping::{Measurement, Timestamp};

/// One future Observation: the measurements of one batch group that fall in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservationGroup {
    /// The measurement type (also the Observation's `code.text` and identifier part).
    pub type_name: String,
    pub device_id: String,
    pub patient_id: Option<String>,
    pub encounter_id: Option<String>,
    pub correlation_id: Option<String>,
    /// The interval the group was split by.
    pub period: PeriodInterval,
    /// Window start (inclusive).
    pub start: Timestamp,
    /// Window end (inclusive).
    pub end: Timestamp,
    /// Identifier segment: `{start}.{end}` in `yyyyMMddHHmmssZ`, or the correlation id.
    pub segment: String,
    /// Per property name (sorted by name): `(time, value)` sorted by time, times unique.
    pub values: Vec<(String, Vec<(Timestamp, String)>)>,
    /// Indices into the input slice of every measurement that fell in this group, including
    /// those dropped by the dedup (they are settled when the group is). Ascending.
    pub source_indices: Vec<usize>,
}

impl ObservationGroup {
    /// The `(time, value)` series of one property, if the group has it.
    pub fn values_of(&self, value_name: &str) -> Option<&[(Timestamp, String)]> {
        self.values
            .iter()
            .find(|(name, _)| name == value_name)
            .map(|(_, v)| v.as_slice())
    }
}

/// A batch group that could not be grouped. The other groups of the batch are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// No FHIR template for the measurement type (upstream `TemplateNotFoundException`).
    #[error("no fhir template for measurement type {type_name:?}")]
    NoTemplate {
        type_name: String,
        device_id: String,
        source_indices: Vec<usize>,
    },
    /// CorrelationId grouping with a missing or blank correlation id
    /// (upstream `CorrelationIdNotDefinedException`).
    #[error(
        "correlation id not defined for measurement type {type_name:?} of device {device_id:?}"
    )]
    CorrelationIdNotDefined {
        type_name: String,
        device_id: String,
        source_indices: Vec<usize>,
    },
    /// A window boundary fell outside the representable time range.
    #[error(
        "window boundary out of range for measurement type {type_name:?} of device {device_id:?}"
    )]
    TimeOutOfRange {
        type_name: String,
        device_id: String,
        source_indices: Vec<usize>,
    },
}

impl GroupError {
    /// Indices into the input slice of the measurements this error covers.
    pub fn source_indices(&self) -> &[usize] {
        match self {
            GroupError::NoTemplate { source_indices, .. }
            | GroupError::CorrelationIdNotDefined { source_indices, .. }
            | GroupError::TimeOutOfRange { source_indices, .. } => source_indices,
        }
    }
}

/// The interval grouping should use for a template: the template's own, except that templates
/// with any non-SampledData value or component are grouped Single (MedTech: "periodInterval is
/// ignored for non-SampledData types"). Templates with no value and no component keep theirs.
pub fn effective_period_interval(template: &CodeValueFhirTemplate) -> PeriodInterval {
    let non_sampled = template
        .value
        .iter()
        .chain(template.components.iter().map(|c| &c.value))
        .any(|v| !matches!(v, FhirValueTemplate::SampledData { .. }));
    if non_sampled {
        PeriodInterval::Single
    } else {
        template.period_interval
    }
}

/// Batch group key: device, type, patient, encounter, correlation (missing = empty). Ordered
/// as the tuple of the five strings; compared and hashed without `memcmp` calls (most ids are
/// short, and a call per field was a fifth of the batch's time).
#[derive(Debug, Clone, Copy)]
struct BatchKey<'a>([&'a str; 5]);

impl PartialEq for BatchKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| str_eq(a, b))
    }
}

impl Eq for BatchKey<'_> {}

impl PartialOrd for BatchKey<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BatchKey<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

impl std::hash::Hash for BatchKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for s in self.0 {
            state.write(s.as_bytes());
            state.write_u8(0xff);
        }
    }
}

fn batch_key(m: &Measurement) -> BatchKey<'_> {
    BatchKey([
        &m.device_id,
        &m.type_name,
        m.patient_id.as_deref().unwrap_or(""),
        m.encounter_id.as_deref().unwrap_or(""),
        m.correlation_id.as_deref().unwrap_or(""),
    ])
}

/// `a == b`, inline for short strings (no `memcmp` call) and immediate for the same string.
#[inline]
pub(crate) fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    if a.as_ptr() == b.as_ptr() {
        return true;
    }
    if a.len() <= 32 {
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    } else {
        a == b
    }
}

/// Groups a batch. `period_of` maps a measurement type to the interval to split by (usually
/// [`effective_period_interval`] of the type's template), or `None` when the type has no
/// FHIR template, which yields [`GroupError::NoTemplate`] for that batch group only.
pub fn group_measurements(
    measurements: &[Measurement],
    period_of: &dyn Fn(&str) -> Option<PeriodInterval>,
) -> (Vec<ObservationGroup>, Vec<GroupError>) {
    let grouped = group_spans(measurements, period_of);
    let groups = grouped.iter().map(|g| g.to_group()).collect();
    (groups, grouped.errors)
}

/// A batch grouped as [`group_measurements`] does, each group a [`GroupView`] over the
/// measurements (no per-group allocation: the indices of all groups share two vectors).
#[derive(Debug)]
pub struct Grouped<'a> {
    measurements: &'a [Measurement],
    spans: Vec<Span>,
    /// The kept (deduplicated) measurements of every group, each group's in time order.
    kept: Vec<usize>,
    /// Every input index of every group, each group's ascending.
    all: Vec<usize>,
    /// The batch groups that could not be grouped, in key order.
    pub errors: Vec<GroupError>,
}

/// One group of a [`Grouped`]: ranges into its index vectors.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// The measurement whose patient / encounter / correlation ids the group carries
    /// (upstream's `measurements[0]` of the batch group after the dedup).
    first: usize,
    period: PeriodInterval,
    start: Timestamp,
    end: Timestamp,
    kept: (usize, usize),
    all: (usize, usize),
}

impl<'a> Grouped<'a> {
    /// The groups, in [`group_measurements`] order.
    pub fn iter(&self) -> impl Iterator<Item = GroupView<'_>> + '_ {
        self.spans.iter().map(move |s| GroupView {
            measurements: self.measurements,
            first: &self.measurements[s.first],
            period: s.period,
            start: s.start,
            end: s.end,
            kept: self.kept.get(s.kept.0..s.kept.1).unwrap_or_default(),
            all: self.all.get(s.all.0..s.all.1).unwrap_or_default(),
        })
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// A group of a [`Grouped`] batch: what an [`ObservationGroup`] holds, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct GroupView<'g> {
    measurements: &'g [Measurement],
    first: &'g Measurement,
    pub period: PeriodInterval,
    pub start: Timestamp,
    pub end: Timestamp,
    kept: &'g [usize],
    all: &'g [usize],
}

/// The identifier segment of a group, without allocation.
pub enum Segment<'g> {
    /// `{start}.{end}` in `yyyyMMddHHmmssZ` (both in the fast range).
    Times([u8; 31]),
    /// The correlation id, or a time pair outside the fast range.
    Text(std::borrow::Cow<'g, str>),
}

impl Segment<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            // Only ASCII digits, `Z` and `.`.
            Segment::Times(b) => std::str::from_utf8(b).unwrap_or_default(),
            Segment::Text(s) => s,
        }
    }
}

/// One property's `(time, value)` series of a [`GroupView`], time-ascending, times unique.
pub enum Series<'g> {
    One([(Timestamp, &'g str); 1]),
    Many(Vec<(Timestamp, &'g str)>),
}

impl<'g> Series<'g> {
    pub fn as_slice(&self) -> &[(Timestamp, &'g str)] {
        match self {
            Series::One(a) => a,
            Series::Many(v) => v,
        }
    }
}

impl<'g> GroupView<'g> {
    pub fn type_name(&self) -> &'g str {
        &self.first.type_name
    }
    pub fn device_id(&self) -> &'g str {
        &self.first.device_id
    }
    pub fn patient_id(&self) -> Option<&'g str> {
        self.first.patient_id.as_deref()
    }
    pub fn encounter_id(&self) -> Option<&'g str> {
        self.first.encounter_id.as_deref()
    }
    pub fn correlation_id(&self) -> Option<&'g str> {
        self.first.correlation_id.as_deref()
    }
    /// [`ObservationGroup::source_indices`].
    pub fn source_indices(&self) -> &'g [usize] {
        self.all
    }

    /// [`ObservationGroup::segment`].
    pub fn segment(&self) -> Segment<'g> {
        self.segment_with(&crate::pipeline::civil::Effective::new(
            self.start, self.end,
        ))
    }

    /// [`GroupView::segment`] with the window's "o" texts already computed (`effective` must
    /// be `Effective::new(self.start, self.end)`).
    pub(crate) fn segment_with(
        &self,
        effective: &crate::pipeline::civil::Effective,
    ) -> Segment<'g> {
        use crate::pipeline::civil::segment_of_o;
        if self.period == PeriodInterval::CorrelationId {
            return Segment::Text(self.correlation_id().unwrap_or("").into());
        }
        if let (Some(s), Some(e)) = (&effective.start, &effective.end) {
            let mut b = [b'.'; 31];
            b[..15].copy_from_slice(&segment_of_o(s));
            b[16..].copy_from_slice(&segment_of_o(e));
            return Segment::Times(b);
        }
        let mut text = String::with_capacity(31);
        self.start.write_segment(&mut text);
        text.push('.');
        self.end.write_segment(&mut text);
        Segment::Text(text.into())
    }

    /// [`ObservationGroup::values_of`]: per kept measurement (distinct times), the first value
    /// of that name.
    pub fn series(&self, name: &str) -> Option<Series<'g>> {
        let ms = self.measurements;
        let value_of = |i: usize| {
            let m = ms.get(i)?;
            m.properties
                .iter()
                .find(|(n, _)| str_eq(n, name))
                .map(|(_, v)| (m.occurrence_time, &**v))
        };
        match self.kept {
            [only] => value_of(*only).map(|p| Series::One([p])),
            kept => {
                let v: Vec<_> = kept.iter().filter_map(|&i| value_of(i)).collect();
                (!v.is_empty()).then_some(Series::Many(v))
            }
        }
    }

    /// The owned group ([`group_measurements`]'s form).
    pub fn to_group(&self) -> ObservationGroup {
        let f = self.first;
        let mut g = ObservationGroup {
            type_name: (*f.type_name).to_owned(),
            device_id: (*f.device_id).to_owned(),
            patient_id: f.patient_id.as_deref().map(str::to_owned),
            encounter_id: f.encounter_id.as_deref().map(str::to_owned),
            correlation_id: f.correlation_id.as_deref().map(str::to_owned),
            period: self.period,
            start: self.start,
            end: self.end,
            segment: self.segment().as_str().to_owned(),
            values: Vec::new(),
            source_indices: self.all.to_vec(),
        };
        fill_values(&mut g, self.measurements, self.kept);
        g
    }
}

/// FxHash-style hasher for the batch keys (the std SipHash was a tenth of the batch's time).
/// Not DoS-resistant: a batch is bounded (`pipeline.max_events_per_flush`), so colliding keys
/// could only slow one batch down, never change its result.
#[derive(Default)]
struct KeyHasher(u64);

const KEY_SEED: u64 = 0xf135_7aea_2e62_a9c5;

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(KEY_SEED);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59))
                .wrapping_mul(KEY_SEED);
        }
        self.0 = h;
    }
    fn write_u8(&mut self, i: u8) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(KEY_SEED);
    }
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

/// Groups a batch (the work of [`group_measurements`]): batch keys through a hash map, batch
/// groups sorted by key, each one's indices sorted by `(time, index)` so that the dedup
/// winners and the windows come out of one pass.
pub fn group_spans<'a>(
    measurements: &'a [Measurement],
    period_of: &dyn Fn(&str) -> Option<PeriodInterval>,
) -> Grouped<'a> {
    use std::collections::HashMap;
    use std::hash::BuildHasherDefault;

    let n = measurements.len();
    // 1. Batch group of every measurement.
    let mut ids: HashMap<BatchKey<'a>, usize, BuildHasherDefault<KeyHasher>> = HashMap::default();
    let mut keys: Vec<BatchKey<'a>> = Vec::new();
    let mut counts: Vec<usize> = Vec::new();
    let mut batch_of: Vec<usize> = Vec::with_capacity(n);
    let mut last: Option<(BatchKey<'a>, usize)> = None;
    for m in measurements {
        let k = batch_key(m);
        let b = match last {
            Some((lk, lb)) if lk == k => lb,
            _ => *ids.entry(k).or_insert_with(|| {
                keys.push(k);
                counts.push(0);
                keys.len() - 1
            }),
        };
        last = Some((k, b));
        if let Some(c) = counts.get_mut(b) {
            *c += 1;
        }
        batch_of.push(b);
    }
    // 2. Batch groups in key order; their indices contiguous (ascending) in `sorted`.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]));
    let mut offset = vec![0usize; keys.len()];
    let mut acc = 0;
    for &b in &order {
        offset[b] = acc;
        acc += counts[b];
    }
    let mut sorted = vec![0usize; n];
    let mut fill = offset.clone();
    for (i, &b) in batch_of.iter().enumerate() {
        sorted[fill[b]] = i;
        fill[b] += 1;
    }
    // 3. Dedup and split each batch group.
    let mut out = Grouped {
        measurements,
        spans: Vec::with_capacity(n),
        kept: Vec::with_capacity(n),
        all: Vec::with_capacity(n),
        errors: Vec::new(),
    };
    let mut scratch = Vec::new();
    for &b in &order {
        let indices = &sorted[offset[b]..offset[b] + counts[b]];
        if let Err(e) = split_spans(measurements, indices, period_of, &mut out, &mut scratch) {
            out.errors.push(e);
        }
    }
    out
}

/// Dedup + split of one batch group (`indices` ascending, non-empty) into `out`; on error
/// nothing of this batch group is left in `out`.
fn split_spans(
    measurements: &[Measurement],
    indices: &[usize],
    period_of: &dyn Fn(&str) -> Option<PeriodInterval>,
    out: &mut Grouped<'_>,
    by_time: &mut Vec<(Timestamp, usize)>,
) -> Result<(), GroupError> {
    let Some(&first_input) = indices.first() else {
        return Ok(());
    };
    // The dedup winner at the time of the batch group's first input: upstream's
    // `measurements[0]` after `GroupBy(time)` (latest ingestion, earliest input on a tie).
    let t0 = measurements[first_input].occurrence_time;
    let mut first = first_input;
    for &i in indices {
        let m = &measurements[i];
        if m.occurrence_time == t0 && m.ingestion_time > measurements[first].ingestion_time {
            first = i;
        }
    }
    let fm = &measurements[first];
    let error = |make: fn(String, String, Vec<usize>) -> GroupError| {
        make(
            (*fm.type_name).to_owned(),
            (*fm.device_id).to_owned(),
            indices.to_vec(),
        )
    };
    let Some(period) = period_of(&fm.type_name) else {
        return Err(error(|type_name, device_id, source_indices| {
            GroupError::NoTemplate {
                type_name,
                device_id,
                source_indices,
            }
        }));
    };
    if period == PeriodInterval::CorrelationId
        && fm.correlation_id.as_deref().unwrap_or("").trim().is_empty()
    {
        return Err(error(|type_name, device_id, source_indices| {
            GroupError::CorrelationIdNotDefined {
                type_name,
                device_id,
                source_indices,
            }
        }));
    }

    by_time.clear();
    by_time.extend(
        indices
            .iter()
            .map(|&i| (measurements[i].occurrence_time, i)),
    );
    by_time.sort_unstable();
    let marks = (out.spans.len(), out.kept.len(), out.all.len());
    // The window being filled: its span and how many distinct times it has.
    let mut open: Option<(Span, usize)> = None;
    let mut pos = 0;
    while let Some(&(t, i0)) = by_time.get(pos) {
        // One run of equal times: the latest ingestion wins, the earliest input on a tie.
        let mut end = pos + 1;
        let mut winner = i0;
        while let Some(&(ti, i)) = by_time.get(end) {
            if ti != t {
                break;
            }
            if measurements[i].ingestion_time > measurements[winner].ingestion_time {
                winner = i;
            }
            end += 1;
        }
        let Some((w_start, w_end)) = boundary(period, t) else {
            out.spans.truncate(marks.0);
            out.kept.truncate(marks.1);
            out.all.truncate(marks.2);
            return Err(error(|type_name, device_id, source_indices| {
                GroupError::TimeOutOfRange {
                    type_name,
                    device_id,
                    source_indices,
                }
            }));
        };
        let same_window = matches!(&open, Some((s, _))
            if period == PeriodInterval::CorrelationId || s.start == w_start);
        if !same_window {
            if let Some((s, runs)) = open.take() {
                close(out, s, runs);
            }
            open = Some((
                Span {
                    first,
                    period,
                    start: w_start,
                    end: w_end,
                    kept: (out.kept.len(), out.kept.len()),
                    all: (out.all.len(), out.all.len()),
                },
                0,
            ));
        }
        if let Some((s, runs)) = &mut open {
            if period == PeriodInterval::CorrelationId {
                // `[min, max]` of the times: the runs come in time order.
                s.end = t;
            }
            out.kept.push(winner);
            out.all.extend(by_time[pos..end].iter().map(|&(_, i)| i));
            *runs += 1;
        }
        pos = end;
    }
    if let Some((s, runs)) = open {
        close(out, s, runs);
    }
    Ok(())
}

/// Ends a window: its index ranges, its `all` part ascending (one run is already).
fn close(out: &mut Grouped<'_>, mut s: Span, runs: usize) {
    s.kept.1 = out.kept.len();
    s.all.1 = out.all.len();
    if runs > 1 {
        if let Some(all) = out.all.get_mut(s.all.0..s.all.1) {
            all.sort_unstable();
        }
    }
    out.spans.push(s);
}

/// Window `(start, end)` of a time for a time-based interval; `None` on overflow.
fn boundary(period: PeriodInterval, t: Timestamp) -> Option<(Timestamp, Timestamp)> {
    const HOUR: i64 = 3600 * TICKS_PER_SECOND;
    const DAY: i64 = 24 * HOUR;
    match period {
        PeriodInterval::Single | PeriodInterval::CorrelationId => Some((t, t)),
        PeriodInterval::Hourly => {
            let s = t.floor_hour();
            Some((s, s.add_ticks(HOUR - 1)?))
        }
        PeriodInterval::Daily => {
            let s = t.floor_day();
            Some((s, s.add_ticks(DAY - 1)?))
        }
    }
}

/// Adds the properties of `kept` (in that order) to the group: per name, first value at a given
/// time wins.
fn fill_values(g: &mut ObservationGroup, measurements: &[Measurement], kept: &[usize]) {
    if let [only] = kept {
        // One measurement (every Single group): per name its first value, names sorted as
        // the maps below would sort them (`str` order), without building the maps.
        let Some(m) = measurements.get(*only) else {
            return;
        };
        let mut values: Vec<(String, Vec<(Timestamp, String)>)> =
            Vec::with_capacity(m.properties.len());
        for (name, value) in &m.properties {
            if !values.iter().any(|(n, _)| n == name) {
                values.push((name.clone(), vec![(m.occurrence_time, value.clone())]));
            }
        }
        values.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        g.values = values;
        return;
    }
    fill_values_general(g, measurements, kept);
}

/// [`fill_values`] for any number of measurements.
fn fill_values_general(g: &mut ObservationGroup, measurements: &[Measurement], kept: &[usize]) {
    let mut by_name: BTreeMap<&str, BTreeMap<Timestamp, &str>> = BTreeMap::new();
    for &i in kept {
        let m = &measurements[i];
        for (name, value) in &m.properties {
            by_name
                .entry(name.as_str())
                .or_default()
                .entry(m.occurrence_time)
                .or_insert(value.as_str());
        }
    }
    g.values = by_name
        .into_iter()
        .map(|(name, series)| {
            (
                name.to_owned(),
                series.into_iter().map(|(t, v)| (t, v.to_owned())).collect(),
            )
        })
        .collect();
}

/// The grouping as first written (two `BTreeMap`s and per-group clones), kept as the oracle
/// the proptest in `spans_tests` compares [`group_measurements`] against.
#[cfg(test)]
mod reference {
    use super::*;
    use std::collections::BTreeMap;

    /// Groups a batch. `period_of` maps a measurement type to the interval to split by (usually
    /// [`effective_period_interval`] of the type's template), or `None` when the type has no
    /// FHIR template, which yields [`GroupError::NoTemplate`] for that batch group only.
    pub(super) fn group_measurements(
        measurements: &[Measurement],
        period_of: &dyn Fn(&str) -> Option<PeriodInterval>,
    ) -> (Vec<ObservationGroup>, Vec<GroupError>) {
        let mut batches: BTreeMap<BatchKey<'_>, Vec<usize>> = BTreeMap::new();
        for (i, m) in measurements.iter().enumerate() {
            batches.entry(batch_key(m)).or_default().push(i);
        }

        let mut groups = Vec::new();
        let mut errors = Vec::new();
        for indices in batches.values() {
            match split_batch(measurements, indices, period_of) {
                Ok(mut g) => groups.append(&mut g),
                Err(e) => errors.push(e),
            }
        }
        (groups, errors)
    }

    /// Dedup + split of one batch group (`indices` ascending, non-empty).
    fn split_batch(
        measurements: &[Measurement],
        indices: &[usize],
        period_of: &dyn Fn(&str) -> Option<PeriodInterval>,
    ) -> Result<Vec<ObservationGroup>, GroupError> {
        let kept = dedup(measurements, indices);
        // `kept` is non-empty because `indices` is; its first entry is upstream's `measurements[0]`.
        let Some(&first_idx) = kept.first() else {
            return Ok(Vec::new());
        };
        let first = &measurements[first_idx];
        let type_name = first.type_name.clone();
        let device_id = first.device_id.clone();

        let Some(period) = period_of(&first.type_name) else {
            return Err(GroupError::NoTemplate {
                type_name,
                device_id,
                source_indices: indices.to_vec(),
            });
        };

        let new_group = |start: Timestamp, end: Timestamp, segment: String| ObservationGroup {
            type_name: first.type_name.clone(),
            device_id: first.device_id.clone(),
            patient_id: first.patient_id.clone(),
            encounter_id: first.encounter_id.clone(),
            correlation_id: first.correlation_id.clone(),
            period,
            start,
            end,
            segment,
            values: Vec::new(),
            source_indices: Vec::new(),
        };

        if period == PeriodInterval::CorrelationId {
            let corr = first.correlation_id.as_deref().unwrap_or("");
            if corr.trim().is_empty() {
                return Err(GroupError::CorrelationIdNotDefined {
                    type_name,
                    device_id,
                    source_indices: indices.to_vec(),
                });
            }
            let times = kept.iter().map(|&i| measurements[i].occurrence_time);
            let (Some(start), Some(end)) = (times.clone().min(), times.max()) else {
                return Ok(Vec::new());
            };
            let mut g = new_group(start, end, corr.to_owned());
            fill_values(&mut g, measurements, &kept);
            g.source_indices = indices.to_vec();
            return Ok(vec![g]);
        }

        // Time windows keyed by start; each window remembers its kept measurements and all the
        // input indices (dedup losers included) whose time falls in it.
        let mut windows: BTreeMap<Timestamp, (Timestamp, Vec<usize>, Vec<usize>)> = BTreeMap::new();
        for &i in indices {
            let t = measurements[i].occurrence_time;
            let Some((start, end)) = boundary(period, t) else {
                return Err(GroupError::TimeOutOfRange {
                    type_name,
                    device_id,
                    source_indices: indices.to_vec(),
                });
            };
            windows
                .entry(start)
                .or_insert_with(|| (end, Vec::new(), Vec::new()))
                .2
                .push(i);
        }
        for &i in &kept {
            let t = measurements[i].occurrence_time;
            if let Some((start, _)) = boundary(period, t) {
                if let Some(w) = windows.get_mut(&start) {
                    w.1.push(i);
                }
            }
        }

        let mut out = Vec::with_capacity(windows.len());
        for (start, (end, kept_here, all_here)) in windows {
            let mut segment = String::with_capacity(31);
            start.write_segment(&mut segment);
            segment.push('.');
            end.write_segment(&mut segment);
            let mut g = new_group(start, end, segment);
            fill_values(&mut g, measurements, &kept_here);
            g.source_indices = all_here;
            out.push(g);
        }
        Ok(out)
    }

    /// Dedup by occurrence time: the latest ingestion wins, ties keep the earliest input. Returns
    /// the kept indices in order of each timestamp's first appearance (upstream `GroupBy` order).
    fn dedup(measurements: &[Measurement], indices: &[usize]) -> Vec<usize> {
        let mut order: Vec<Timestamp> = Vec::new();
        let mut best: BTreeMap<Timestamp, usize> = BTreeMap::new();
        for &i in indices {
            let m = &measurements[i];
            match best.get_mut(&m.occurrence_time) {
                None => {
                    order.push(m.occurrence_time);
                    best.insert(m.occurrence_time, i);
                }
                Some(cur) => {
                    if m.ingestion_time > measurements[*cur].ingestion_time {
                        *cur = i;
                    }
                }
            }
        }
        order.iter().filter_map(|t| best.get(t).copied()).collect()
    }
}

#[cfg(test)]
mod spans_tests {
    //! The hash-and-sort grouping against the original `BTreeMap` one, on random batches with
    //! few distinct keys, times and ingestion times (so dedup ties, same-second readings,
    //! shared windows and missing-vs-empty ids all occur), for every interval.
    use super::*;
    use proptest::prelude::*;

    fn measurement() -> impl Strategy<Value = Measurement> {
        let id = || proptest::option::of(prop_oneof![Just(""), Just(" "), Just("a"), Just("b-c")]);
        (
            prop_oneof![Just("hr"), Just("HR"), Just("bp"), Just("none")],
            prop_oneof![Just("d1"), Just("d2"), Just("d1-x")],
            id(),
            id(),
            id(),
            // Seconds around two hour and one day boundaries, sub-second fractions.
            (0i64..3, 0i64..8, 0u32..3),
            0i64..3,
            proptest::collection::vec(
                (prop_oneof![Just("v"), Just("w"), Just("")], "[0-9]{1,2}"),
                0..4,
            ),
        )
            .prop_map(|(ty, dev, p, e, c, (day, sec, frac), ing, props)| {
                let base = 1_700_006_399 + day * 86_400 - 3;
                let t = Timestamp::from_unix(base + sec, frac * 5_000_000 / 2).expect("valid time");
                let ingest = Timestamp::from_unix(1_800_000_000 + ing, 0).expect("valid time");
                Measurement {
                    type_name: ty.to_owned(),
                    occurrence_time: t,
                    ingestion_time: ingest,
                    device_id: dev.to_owned(),
                    patient_id: p.map(str::to_owned),
                    encounter_id: e.map(str::to_owned),
                    correlation_id: c.map(str::to_owned),
                    properties: props.into_iter().map(|(n, v)| (n.to_owned(), v)).collect(),
                }
            })
    }

    fn period(k: u8) -> Option<PeriodInterval> {
        match k {
            0 => Some(PeriodInterval::Single),
            1 => Some(PeriodInterval::Hourly),
            2 => Some(PeriodInterval::Daily),
            3 => Some(PeriodInterval::CorrelationId),
            _ => None,
        }
    }

    proptest! {
        #[test]
        fn str_eq_is_string_equality(a in "[ab\u{e9}]{0,40}", b in "[ab\u{e9}]{0,40}") {
            prop_assert_eq!(str_eq(&a, &b), a == b);
            prop_assert!(str_eq(&a, &a.clone()));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn same_groups_and_errors_as_the_reference(
            ms in proptest::collection::vec(measurement(), 0..40),
            hr in 0u8..5,
            bp in 0u8..5,
        ) {
            let period_of = |t: &str| match t {
                "hr" | "HR" => period(hr),
                "bp" => period(bp),
                _ => None,
            };
            let want = reference::group_measurements(&ms, &period_of);
            let got = group_measurements(&ms, &period_of);
            prop_assert_eq!(&got, &want);
            // The views answer `values_of` as the owned groups do.
            let grouped = group_spans(&ms, &period_of);
            prop_assert_eq!(grouped.len(), want.0.len());
            for (view, g) in grouped.iter().zip(&want.0) {
                for name in ["v", "w", "", "x"] {
                    let a = view.series(name).map(|s| {
                        s.as_slice().iter().map(|&(t, v)| (t, v.to_owned())).collect::<Vec<_>>()
                    });
                    prop_assert_eq!(a.as_deref(), g.values_of(name));
                }
                let segment = view.segment();
                prop_assert_eq!(segment.as_str(), g.segment.as_str());
                prop_assert_eq!(view.source_indices(), g.source_indices.as_slice());
            }
        }
    }
}

#[cfg(test)]
mod fill_values_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn one_measurement_fills_as_the_general_path(
            props in proptest::collection::vec(("[abAB_]{0,3}", "[0-9x]{0,3}"), 0..8),
        ) {
            let t = Timestamp::from_unix(1_700_000_000, 0).expect("valid");
            let m = Measurement {
                type_name: "hr".to_owned(),
                occurrence_time: t,
                ingestion_time: t,
                device_id: "d".to_owned(),
                patient_id: None,
                encounter_id: None,
                correlation_id: None,
                properties: props,
            };
            let blank = || ObservationGroup {
                type_name: String::new(),
                device_id: String::new(),
                patient_id: None,
                encounter_id: None,
                correlation_id: None,
                period: PeriodInterval::Single,
                start: t,
                end: t,
                segment: String::new(),
                values: Vec::new(),
                source_indices: Vec::new(),
            };
            let (mut fast, mut general) = (blank(), blank());
            fill_values(&mut fast, std::slice::from_ref(&m), &[0]);
            fill_values_general(&mut general, std::slice::from_ref(&m), &[0]);
            prop_assert_eq!(fast.values, general.values);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::fhir_model::{ComponentTemplate, TemplateDecimal};

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse_rfc3339(s).expect("test timestamp")
    }

    fn m(ty: &str, dev: &str, t: &str, ingest: &str, props: &[(&str, &str)]) -> Measurement {
        Measurement {
            type_name: ty.into(),
            occurrence_time: ts(t),
            ingestion_time: ts(ingest),
            device_id: dev.into(),
            patient_id: Some("patient1".into()),
            encounter_id: None,
            correlation_id: None,
            properties: props
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    fn fixed(p: PeriodInterval) -> impl Fn(&str) -> Option<PeriodInterval> {
        move |_| Some(p)
    }

    const ING: &str = "2023-10-09T20:00:00Z";

    #[test]
    fn single_one_group_per_distinct_tick_and_same_second_shares_identifier_segment() {
        let ms = vec![
            m("hr", "d1", "2023-10-09T19:18:23.9Z", ING, &[("hr", "2")]),
            m("hr", "d1", "2023-10-09T19:18:23.1Z", ING, &[("hr", "1")]),
            m("hr", "d1", "2023-10-09T19:18:24Z", ING, &[("hr", "3")]),
        ];
        let (groups, errors) = group_measurements(&ms, &fixed(PeriodInterval::Single));
        assert!(errors.is_empty());
        assert_eq!(groups.len(), 3);
        // Sorted by start; the two same-second readings stay separate groups.
        assert_eq!(groups[0].start, ts("2023-10-09T19:18:23.1Z"));
        assert_eq!(groups[0].end, groups[0].start);
        assert_eq!(
            groups[0].values_of("hr").unwrap(),
            &[(ts("2023-10-09T19:18:23.1Z"), "1".to_owned())]
        );
        assert_eq!(groups[0].segment, "20231009191823Z.20231009191823Z");
        assert_eq!(groups[1].segment, groups[0].segment);
        assert_eq!(groups[1].start, ts("2023-10-09T19:18:23.9Z"));
        assert_eq!(groups[2].segment, "20231009191824Z.20231009191824Z");
        assert_eq!(groups[0].source_indices, vec![1]);
        assert_eq!(groups[1].source_indices, vec![0]);
        assert!(groups.iter().all(|g| g.period == PeriodInterval::Single));
    }

    #[test]
    fn hourly_windows_are_utc_hours_ending_one_tick_before_the_next() {
        let ms = vec![
            m("hr", "d1", "2023-10-09T19:18:23Z", ING, &[("hr", "80")]),
            m(
                "hr",
                "d1",
                "2023-10-09T19:59:59.9999999Z",
                ING,
                &[("hr", "81")],
            ),
            m("hr", "d1", "2023-10-09T20:00:00Z", ING, &[("hr", "82")]),
            // Offsets are converted to UTC by the parser: 21:30+02:00 is 19:30Z.
            m(
                "hr",
                "d1",
                "2023-10-09T21:30:00+02:00",
                ING,
                &[("hr", "83")],
            ),
        ];
        let (groups, errors) = group_measurements(&ms, &fixed(PeriodInterval::Hourly));
        assert!(errors.is_empty());
        assert_eq!(groups.len(), 2);
        let g = &groups[0];
        assert_eq!(g.start.format_o(), "2023-10-09T19:00:00.0000000Z");
        assert_eq!(g.end.format_o(), "2023-10-09T19:59:59.9999999Z");
        assert_eq!(g.segment, "20231009190000Z.20231009195959Z");
        let vals: Vec<&str> = g
            .values_of("hr")
            .unwrap()
            .iter()
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(vals, ["80", "83", "81"], "time-sorted");
        assert_eq!(g.source_indices, vec![0, 1, 3]);
        assert_eq!(groups[1].segment, "20231009200000Z.20231009205959Z");
    }

    #[test]
    fn daily_windows_are_utc_days() {
        let ms = vec![
            m("steps", "d1", "2023-10-09T00:00:00Z", ING, &[("s", "1")]),
            m(
                "steps",
                "d1",
                "2023-10-09T23:59:59.9999999Z",
                ING,
                &[("s", "2")],
            ),
            m("steps", "d1", "2023-10-10T00:00:00Z", ING, &[("s", "3")]),
        ];
        let (groups, _) = group_measurements(&ms, &fixed(PeriodInterval::Daily));
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].start.format_o(), "2023-10-09T00:00:00.0000000Z");
        assert_eq!(groups[0].end.format_o(), "2023-10-09T23:59:59.9999999Z");
        assert_eq!(groups[0].segment, "20231009000000Z.20231009235959Z");
        assert_eq!(groups[0].values_of("s").unwrap().len(), 2);
        assert_eq!(groups[1].start.format_o(), "2023-10-10T00:00:00.0000000Z");
    }

    #[test]
    fn correlation_groups_span_min_to_max_and_use_the_id_as_segment() {
        let mut a = m("ecg", "d1", "2023-10-09T19:18:25Z", ING, &[("v", "2")]);
        let mut b = m("ecg", "d1", "2023-10-09T10:00:00Z", ING, &[("v", "1")]);
        let mut c = m("ecg", "d1", "2023-10-10T01:00:00Z", ING, &[("v", "3")]);
        for x in [&mut a, &mut b, &mut c] {
            x.correlation_id = Some("run-42".into());
        }
        let mut other = m("ecg", "d1", "2023-10-09T19:00:00Z", ING, &[("v", "9")]);
        other.correlation_id = Some("run-43".into());
        let ms = vec![a, b, c, other];
        let (groups, errors) = group_measurements(&ms, &fixed(PeriodInterval::CorrelationId));
        assert!(errors.is_empty());
        assert_eq!(groups.len(), 2);
        let g = &groups[0];
        assert_eq!(g.segment, "run-42");
        assert_eq!(g.start, ts("2023-10-09T10:00:00Z"));
        assert_eq!(g.end, ts("2023-10-10T01:00:00Z"));
        assert_eq!(g.values_of("v").unwrap().len(), 3);
        assert_eq!(g.source_indices, vec![0, 1, 2]);
        assert_eq!(groups[1].segment, "run-43");
    }

    #[test]
    fn blank_correlation_id_is_an_error_for_that_group_only() {
        let mut blank = m("ecg", "d1", "2023-10-09T19:18:25Z", ING, &[("v", "2")]);
        blank.correlation_id = Some("  ".into());
        let missing = m("ecg", "d2", "2023-10-09T19:18:25Z", ING, &[("v", "2")]);
        let mut ok = m("ecg", "d3", "2023-10-09T19:18:25Z", ING, &[("v", "2")]);
        ok.correlation_id = Some("c".into());
        let (groups, errors) =
            group_measurements(&[blank, missing, ok], &fixed(PeriodInterval::CorrelationId));
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].device_id, "d3");
        assert_eq!(errors.len(), 2);
        assert!(
            matches!(&errors[0], GroupError::CorrelationIdNotDefined { device_id, .. } if device_id == "d1")
        );
        assert_eq!(errors[1].source_indices(), &[1]);
        assert!(errors[0]
            .to_string()
            .starts_with("correlation id not defined"));
    }

    #[test]
    fn dedup_keeps_latest_ingestion_and_first_input_on_ties() {
        let t = "2023-10-09T19:18:23Z";
        let ms = vec![
            m("hr", "d1", t, "2023-10-09T19:20:00Z", &[("hr", "old")]),
            m("hr", "d1", t, "2023-10-09T19:25:00Z", &[("hr", "newest")]),
            m("hr", "d1", t, "2023-10-09T19:21:00Z", &[("hr", "middle")]),
            m(
                "hr",
                "d1",
                t,
                "2023-10-09T19:25:00Z",
                &[("hr", "tie-later-input")],
            ),
        ];
        for period in [
            PeriodInterval::Single,
            PeriodInterval::Hourly,
            PeriodInterval::Daily,
        ] {
            let (groups, _) = group_measurements(&ms, &fixed(period));
            assert_eq!(groups.len(), 1, "{period:?}");
            assert_eq!(
                groups[0].values_of("hr").unwrap(),
                &[(ts(t), "newest".to_owned())]
            );
            // Dedup losers still belong to the group.
            assert_eq!(groups[0].source_indices, vec![0, 1, 2, 3]);
        }
        let mut corr = ms.clone();
        for x in &mut corr {
            x.correlation_id = Some("c".into());
        }
        let (groups, _) = group_measurements(&corr, &fixed(PeriodInterval::CorrelationId));
        assert_eq!(
            groups[0].values_of("hr").unwrap(),
            &[(ts(t), "newest".to_owned())]
        );
    }

    #[test]
    fn dedup_is_per_batch_key_not_across_devices() {
        let t = "2023-10-09T19:18:23Z";
        let ms = vec![
            m("hr", "d1", t, "2023-10-09T19:20:00Z", &[("hr", "a")]),
            m("hr", "d2", t, "2023-10-09T19:25:00Z", &[("hr", "b")]),
        ];
        let (groups, _) = group_measurements(&ms, &fixed(PeriodInterval::Single));
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].device_id, "d1");
        assert_eq!(groups[0].values_of("hr").unwrap()[0].1, "a");
        assert_eq!(groups[1].values_of("hr").unwrap()[0].1, "b");
    }

    #[test]
    fn batch_key_separates_patients_and_encounters_but_merges_missing_with_empty() {
        let base = m("hr", "d1", "2023-10-09T19:18:23Z", ING, &[("hr", "1")]);
        let mut other_patient = base.clone();
        other_patient.patient_id = Some("patient2".into());
        other_patient.occurrence_time = ts("2023-10-09T19:18:24Z");
        let mut enc = base.clone();
        enc.encounter_id = Some("e1".into());
        enc.occurrence_time = ts("2023-10-09T19:18:25Z");
        let mut empty_enc = base.clone();
        empty_enc.encounter_id = Some(String::new());
        empty_enc.occurrence_time = ts("2023-10-09T19:18:26Z");
        let (groups, _) = group_measurements(
            &[base, other_patient, enc, empty_enc],
            &fixed(PeriodInterval::Hourly),
        );
        assert_eq!(groups.len(), 3);
        let no_enc = groups
            .iter()
            .find(|g| g.patient_id.as_deref() == Some("patient1") && g.encounter_id.is_none())
            .expect("group without encounter");
        assert_eq!(
            no_enc.values_of("hr").unwrap().len(),
            2,
            "None and \"\" merge like upstream"
        );
        assert!(groups
            .iter()
            .any(|g| g.encounter_id.as_deref() == Some("e1")));
        assert!(groups
            .iter()
            .any(|g| g.patient_id.as_deref() == Some("patient2")));
    }

    #[test]
    fn types_without_template_are_errors_and_others_still_group() {
        let ms = vec![
            m("unknown", "d1", "2023-10-09T19:18:23Z", ING, &[("x", "1")]),
            m("hr", "d1", "2023-10-09T19:18:23Z", ING, &[("hr", "1")]),
            m("unknown", "d1", "2023-10-09T19:18:24Z", ING, &[("x", "2")]),
        ];
        let period_of = |t: &str| (t == "hr").then_some(PeriodInterval::Hourly);
        let (groups, errors) = group_measurements(&ms, &period_of);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].type_name, "hr");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].source_indices(), &[0, 2]);
        assert_eq!(
            errors[0].to_string(),
            "no fhir template for measurement type \"unknown\""
        );
    }

    #[test]
    fn identical_time_within_one_measurement_keeps_first_value_and_multiple_properties() {
        let ms = vec![m(
            "bp",
            "d1",
            "2023-10-09T19:18:23Z",
            ING,
            &[
                ("systolic", "120"),
                ("diastolic", "80"),
                ("systolic", "999"),
            ],
        )];
        let (groups, _) = group_measurements(&ms, &fixed(PeriodInterval::Single));
        let g = &groups[0];
        assert_eq!(
            g.values.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["diastolic", "systolic"]
        );
        assert_eq!(g.values_of("systolic").unwrap()[0].1, "120");
        assert!(g.values_of("pulse").is_none());
    }

    #[test]
    fn output_is_independent_of_input_order_for_distinct_times() {
        let ms = vec![
            m("hr", "d2", "2023-10-09T19:18:23Z", ING, &[("hr", "1")]),
            m("hr", "d1", "2023-10-09T21:18:23Z", ING, &[("hr", "2")]),
            m("hr", "d1", "2023-10-09T19:18:23Z", ING, &[("hr", "3")]),
            m("spo2", "d1", "2023-10-09T19:18:23Z", ING, &[("o", "4")]),
        ];
        let (a, _) = group_measurements(&ms, &fixed(PeriodInterval::Hourly));
        let mut rev = ms.clone();
        rev.reverse();
        let (b, _) = group_measurements(&rev, &fixed(PeriodInterval::Hourly));
        let strip = |gs: Vec<ObservationGroup>| {
            gs.into_iter()
                .map(|mut g| {
                    g.source_indices.clear();
                    g
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (strip(a), strip(b));
        assert_eq!(a, b);
        let order: Vec<_> = a
            .iter()
            .map(|g| {
                (
                    g.device_id.as_str(),
                    g.type_name.as_str(),
                    g.segment.as_str(),
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                ("d1", "hr", "20231009190000Z.20231009195959Z"),
                ("d1", "hr", "20231009210000Z.20231009215959Z"),
                ("d1", "spo2", "20231009190000Z.20231009195959Z"),
                ("d2", "hr", "20231009190000Z.20231009195959Z"),
            ]
        );
    }

    #[test]
    fn effective_period_forces_single_for_non_sampled_data() {
        let sampled = FhirValueTemplate::SampledData {
            value_name: "hr".into(),
            default_period: TemplateDecimal {
                text: "5000".into(),
                value: 5000.0,
            },
            unit: None,
        };
        let quantity = FhirValueTemplate::Quantity {
            value_name: "sys".into(),
            unit: None,
            code: None,
            system: None,
        };
        let mut t = CodeValueFhirTemplate {
            type_name: "hr".into(),
            codes: vec![],
            category: vec![],
            period_interval: PeriodInterval::Hourly,
            value: Some(sampled.clone()),
            components: vec![],
        };
        assert_eq!(effective_period_interval(&t), PeriodInterval::Hourly);
        t.components.push(ComponentTemplate {
            codes: vec![],
            value: quantity.clone(),
        });
        assert_eq!(effective_period_interval(&t), PeriodInterval::Single);
        t.components.clear();
        t.value = Some(FhirValueTemplate::String {
            value_name: "s".into(),
        });
        t.period_interval = PeriodInterval::CorrelationId;
        assert_eq!(effective_period_interval(&t), PeriodInterval::Single);
        t.value = None;
        assert_eq!(effective_period_interval(&t), PeriodInterval::CorrelationId);
    }
}
