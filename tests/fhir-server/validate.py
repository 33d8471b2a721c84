#!/usr/bin/env python3
"""Independent validation of FHIR R4 resources written by iomt-edge.

Two layers, both reported with a FHIRPath-like location:

1. ``fhirkit`` (PyPI ``fhirkit-rs`` 0.1.0, the same engine as the Rust crate
   ``fhirkit``): R4 4.0.1 structure -- unknown elements, JSON types, cardinality,
   choice types, primitive formats. It checks nested Bundle entries too.
2. The project's own checks, for rules no available validator enforces
   (docs: fhir-testing.md sections 2.2, 3.1, 3.2, 5):
   - SampledData: ``data`` tokens are decimals or E/L/U separated by single
     spaces; token count is a multiple of ``dimensions``; L/U need
     lowerLimit/upperLimit; ``period`` > 0; ``origin`` carries a UCUM unit, either as
     ``system`` + ``code`` or in microsoft/iomt-fhir's shape ``{value: 0, unit}`` with no
     system and no code (accepted by decision, docs/decisions/0005-sampleddata-origin-
     upstream-shape.md, and reported as a ``note`` so it is never silent; for vital signs
     the ``unit`` must then be one of the allowed UCUM codes).
   - R4 vital-signs profile rules by LOINC code: category vital-signs, subject a
     Patient, effective[x] present, UCUM system and the fixed/allowed unit codes,
     the BP panel shape, and specific profiles (heartrate, oxygensat, ...) claimed
     only on Quantity-valued Observations with the right code.
   - Glucose (not an R4 vital sign): mg/dL for mass, mmol/L for moles.
   - Required value sets fhirkit does not check (Observation.status,
     Device.status, Patient.gender, Encounter.status), Quantity qty-3 (a unit
     code needs a system), identifiers with both system and value, and
     Device.patient pointing at a Patient.

Usage:
    validate.py PATH...            files (.json resource or Bundle, .ndjson) or directories
    validate.py --server URL       everything in a running test server (GET URL/$test/export)
    validate.py -                  JSON or NDJSON on stdin
Exit status: 0 all valid (warnings and notes allowed), 1 some resource has an error,
2 bad usage or unreadable input.

The checks are pure functions of the resource (no I/O, no clock); only main()
reads files or the network.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
SD = "http://hl7.org/fhir/StructureDefinition/"

# R4 decimal lexical form, or one of the special values E (error), L (below the
# lower limit of detection), U (above the upper limit), separated by single spaces.
_TOKEN = r"(?:-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|E|L|U)"
SAMPLED_DATA_RE = re.compile(rf"^{_TOKEN}(?: {_TOKEN})*$")

# LOINC code -> (name, allowed UCUM codes, specific R4 core profile or None).
# Units: the fixed/required codes of the R4 vital-signs profiles (profiles-others.json).
VITAL_SIGNS: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "8867-4": ("heart rate", ("/min",), "heartrate"),
    "2708-6": ("oxygen saturation", ("%",), "oxygensat"),
    "59408-5": ("oxygen saturation by pulse oximetry", ("%",), None),
    "9279-1": ("respiratory rate", ("/min",), "resprate"),
    "8310-5": ("body temperature", ("Cel", "[degF]"), "bodytemp"),
    "29463-7": ("body weight", ("kg", "g", "[lb_av]"), "bodyweight"),
    "8302-2": ("body height", ("cm", "[in_i]"), "bodyheight"),
    "9843-4": ("head circumference", ("cm", "[in_i]"), "headcircum"),
    "39156-5": ("body mass index", ("kg/m2",), "bmi"),
    "8480-6": ("systolic blood pressure", ("mm[Hg]",), None),
    "8462-4": ("diastolic blood pressure", ("mm[Hg]",), None),
    "8478-0": ("mean blood pressure", ("mm[Hg]",), None),
}
BP_PANEL = "85354-9"
VITALS_PANEL = "85353-1"
# ucum-vitals-common: required binding of component.valueQuantity.code in vitalsigns.
UCUM_VITALS_COMMON = {"%", "cm", "[in_i]", "kg", "g", "[lb_av]", "Cel", "[degF]", "mm[Hg]", "/min", "kg/m2", "m2"}
# Specific profiles restrict value[x] to Quantity and fix the LOINC code.
SPECIFIC_PROFILES = {
    SD + p: code for code, (_, _, p) in VITAL_SIGNS.items() if p is not None
}
PANEL_PROFILES = {SD + "bp": BP_PANEL, SD + "vitalspanel": VITALS_PANEL}
# Glucose is laboratory, not a vital sign. Mass/volume -> mg/dL, moles/volume -> mmol/L.
GLUCOSE: dict[str, tuple[str, ...]] = {
    "2339-0": ("mg/dL",),
    "2345-7": ("mg/dL",),
    "41653-7": ("mg/dL",),
    "15074-8": ("mmol/L",),
    "14743-9": ("mmol/L",),
}
REQUIRED_CODES = {
    ("Observation", "status"): {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"},
    ("Device", "status"): {"active", "inactive", "entered-in-error", "unknown"},
    ("Patient", "gender"): {"male", "female", "other", "unknown"},
    ("Encounter", "status"): {"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled", "entered-in-error", "unknown"},
}
IDENTIFIED_TYPES = {"Patient", "Device", "Observation", "Encounter"}


@dataclass(frozen=True)
class Issue:
    severity: str  # "error" | "warning" | "note" (an accepted, documented deviation)
    source: str  # "fhirkit" | "project" | "input"
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity} [{self.source}] {self.path}: {self.message}"


# ----------------------------------------------------------------- project checks


def _loinc_codes(concept: Any) -> list[str]:
    if not isinstance(concept, dict):
        return []
    return [c.get("code") for c in concept.get("coding", []) if isinstance(c, dict) and c.get("system") == LOINC and isinstance(c.get("code"), str)]


def _has_coding(concepts: Any, system: str, code: str) -> bool:
    for cc in concepts if isinstance(concepts, list) else []:
        for c in cc.get("coding", []) if isinstance(cc, dict) else []:
            if isinstance(c, dict) and c.get("system") == system and c.get("code") == code:
                return True
    return False


def _value_keys(node: dict) -> list[str]:
    return [k for k in node if k.startswith("value") and k != "value"]


UPSTREAM_ORIGIN_NOTE = (
    "origin is {value: 0, unit} without UCUM system/code, as microsoft/iomt-fhir writes it; "
    "accepted (docs/decisions/0005-sampleddata-origin-upstream-shape.md)"
)


def upstream_origin(origin: dict) -> bool:
    """True for the connector's SampledData origin: value 0 and a unit, no system, no code."""
    value = origin.get("value")
    return (
        "system" not in origin
        and "code" not in origin
        and isinstance(origin.get("unit"), str)
        and bool(origin["unit"])
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value == 0
    )


def check_sampled_data(sd: Any, path: str) -> list[Issue]:
    """Rules for one SampledData that structural validators miss."""
    out: list[Issue] = []
    err = lambda p, m: out.append(Issue("error", "project", p, m))  # noqa: E731
    if not isinstance(sd, dict):
        return out
    period = sd.get("period")
    if isinstance(period, (int, float)) and not isinstance(period, bool) and period <= 0:
        err(f"{path}.period", f"period must be a positive number of milliseconds, got {period}")
    origin = sd.get("origin")
    if isinstance(origin, dict):
        if upstream_origin(origin):
            out.append(Issue("note", "project", f"{path}.origin", UPSTREAM_ORIGIN_NOTE))
        elif origin.get("system") != UCUM or not origin.get("code"):
            err(f"{path}.origin", f"origin must carry the UCUM unit of the series (system {UCUM} and code)")
    data = sd.get("data")
    if data is None:
        err(f"{path}.data", "data is missing (the agent always sends samples)")
        return out
    if not isinstance(data, str):
        return out  # fhirkit reports the type
    if not SAMPLED_DATA_RE.match(data):
        parts = data.split(" ")
        bad = [t for t in parts if t and not re.fullmatch(_TOKEN, t)]
        spacing = "" in parts
        why = "; ".join(
            ([f"bad token(s) {bad[:5]!r}"] if bad else [])
            + (["leading, trailing or double spaces"] if spacing else [])
        ) or "not a space-separated token list"
        err(f"{path}.data", f"data must be decimals or E/L/U separated by single spaces: {why}")
        return out
    tokens = data.split(" ")
    dims = sd.get("dimensions")
    if isinstance(dims, int) and not isinstance(dims, bool) and dims >= 1 and len(tokens) % dims != 0:
        err(f"{path}.data", f"{len(tokens)} tokens is not a multiple of dimensions={dims}")
    if "L" in tokens and "lowerLimit" not in sd:
        err(f"{path}.lowerLimit", 'data contains "L" but lowerLimit is missing')
    if "U" in tokens and "upperLimit" not in sd:
        err(f"{path}.upperLimit", 'data contains "U" but upperLimit is missing')
    return out


def _check_quantity(q: Any, path: str, allowed: Iterable[str] | None, what: str, origin: bool = False) -> list[Issue]:
    """Quantity unit rules; `origin`: a SampledData origin, where the connector's shape (unit
    only, see upstream_origin) is accepted when that unit is an allowed code."""
    out: list[Issue] = []
    if not isinstance(q, dict):
        return out
    if origin and allowed is not None and upstream_origin(q):
        allowed = tuple(allowed)
        if q["unit"] not in allowed:
            out.append(Issue("error", "project", path, f"{what} needs the UCUM unit {' or '.join(allowed)}; got unit={q['unit']!r}"))
        return out
    if q.get("code") is not None and q.get("system") is None:
        out.append(Issue("error", "project", path, "qty-3: a unit code needs a system"))
    if allowed is not None:
        allowed = tuple(allowed)
        if q.get("system") != UCUM or q.get("code") not in allowed:
            out.append(
                Issue(
                    "error",
                    "project",
                    path,
                    f"{what} needs UCUM system {UCUM} and code {' or '.join(allowed)}; got system={q.get('system')!r} code={q.get('code')!r}",
                )
            )
    return out


def _parse_dt(s: Any) -> datetime | None:
    if not isinstance(s, str) or len(s) < 19:
        return None
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def check_observation(obs: dict, path: str) -> list[Issue]:
    out: list[Issue] = []
    err = lambda p, m: out.append(Issue("error", "project", p, m))  # noqa: E731
    codes = _loinc_codes(obs.get("code"))
    profiles = [p.split("|")[0] for p in (obs.get("meta") or {}).get("profile", []) if isinstance(p, str)]
    value_keys = _value_keys(obs)

    # SampledData wherever it occurs.
    if isinstance(obs.get("valueSampledData"), dict):
        out += check_sampled_data(obs["valueSampledData"], f"{path}.valueSampledData")
    for i, comp in enumerate(obs.get("component") or []):
        if isinstance(comp, dict) and isinstance(comp.get("valueSampledData"), dict):
            out += check_sampled_data(comp["valueSampledData"], f"{path}.component[{i}].valueSampledData")
        if isinstance(comp, dict) and "valueQuantity" in comp:
            out += _check_quantity(comp["valueQuantity"], f"{path}.component[{i}].valueQuantity", None, "")
    if "valueQuantity" in obs:
        out += _check_quantity(obs["valueQuantity"], f"{path}.valueQuantity", None, "")

    # Effective time: a Period must be ordered.
    ep = obs.get("effectivePeriod")
    if isinstance(ep, dict):
        s, e = _parse_dt(ep.get("start")), _parse_dt(ep.get("end"))
        if s and e and s.tzinfo and e.tzinfo and s > e:
            err(f"{path}.effectivePeriod", f"start {ep.get('start')} is after end {ep.get('end')}")

    vital_codes = [c for c in codes if c in VITAL_SIGNS or c in (BP_PANEL, VITALS_PANEL)]
    claims_vitals = any(p == SD + "vitalsigns" or p in SPECIFIC_PROFILES or p in PANEL_PROFILES for p in profiles)
    is_vital = bool(vital_codes) or claims_vitals or _has_coding(obs.get("category"), OBS_CATEGORY, "vital-signs")

    if is_vital:
        if not _has_coding(obs.get("category"), OBS_CATEGORY, "vital-signs"):
            err(f"{path}.category", f"a vital sign needs category {OBS_CATEGORY}|vital-signs")
        subj = (obs.get("subject") or {}).get("reference")
        if not isinstance(subj, str) or not (subj.startswith("Patient/") or subj.startswith("urn:uuid:")):
            err(f"{path}.subject", f"a vital sign needs subject = Reference(Patient), got {subj!r}")
        eff = [k for k in obs if k.startswith("effective")]
        if not eff:
            err(f"{path}.effective[x]", "a vital sign needs effectiveDateTime or effectivePeriod")
        elif "effectiveDateTime" in obs and isinstance(obs["effectiveDateTime"], str) and len(obs["effectiveDateTime"]) < 10:
            err(f"{path}.effectiveDateTime", "vs-1: a vital sign's dateTime must be precise to the day")
        if not value_keys and not obs.get("component") and not obs.get("hasMember") and "dataAbsentReason" not in obs:
            err(path, "vs-2: a vital sign needs value[x] or dataAbsentReason when it has no component or hasMember")
        for i, comp in enumerate(obs.get("component") or []):
            if not isinstance(comp, dict):
                continue
            cpath = f"{path}.component[{i}]"
            if not _value_keys(comp) and "dataAbsentReason" not in comp:
                err(cpath, "vs-3: each component needs value[x] or dataAbsentReason")
            q = comp.get("valueQuantity")
            if isinstance(q, dict) and q.get("code") not in UCUM_VITALS_COMMON:
                err(f"{cpath}.valueQuantity.code", f"{q.get('code')!r} is not in ucum-vitals-common (required binding)")

    # Units by LOINC code.
    for code in codes:
        if code in VITAL_SIGNS:
            name, units, _ = VITAL_SIGNS[code]
            if isinstance(obs.get("valueQuantity"), dict):
                out += _check_quantity(obs["valueQuantity"], f"{path}.valueQuantity", units, name)
            sd = obs.get("valueSampledData")
            if isinstance(sd, dict) and isinstance(sd.get("origin"), dict):
                out += _check_quantity(sd["origin"], f"{path}.valueSampledData.origin", units, name, origin=True)
        if code in GLUCOSE and isinstance(obs.get("valueQuantity"), dict):
            out += _check_quantity(obs["valueQuantity"], f"{path}.valueQuantity", GLUCOSE[code], f"glucose ({code})")
    for i, comp in enumerate(obs.get("component") or []):
        if not isinstance(comp, dict):
            continue
        for code in _loinc_codes(comp.get("code")):
            if code in VITAL_SIGNS:
                name, units, _ = VITAL_SIGNS[code]
                if isinstance(comp.get("valueQuantity"), dict):
                    out += _check_quantity(comp["valueQuantity"], f"{path}.component[{i}].valueQuantity", units, name)
                sd = comp.get("valueSampledData")
                if isinstance(sd, dict) and isinstance(sd.get("origin"), dict):
                    out += _check_quantity(sd["origin"], f"{path}.component[{i}].valueSampledData.origin", units, name, origin=True)

    # Blood pressure panel shape (R4 bp profile).
    if BP_PANEL in codes:
        if value_keys:
            err(path, f"the BP panel {BP_PANEL} must not have a top-level value[x] (found {', '.join(value_keys)})")
        comp_codes = [c for comp in obs.get("component") or [] if isinstance(comp, dict) for c in _loinc_codes(comp.get("code"))]
        for need, name in (("8480-6", "systolic"), ("8462-4", "diastolic")):
            n = comp_codes.count(need)
            if n != 1:
                err(f"{path}.component", f"the BP panel needs exactly one {name} component ({need}), found {n}")

    # Claimed profiles.
    for p in profiles:
        if p in SPECIFIC_PROFILES:
            fixed = SPECIFIC_PROFILES[p]
            if fixed not in codes:
                err(f"{path}.code", f"profile {p} requires LOINC {fixed}")
            if value_keys and value_keys != ["valueQuantity"]:
                err(f"{path}.value[x]", f"profile {p} allows valueQuantity only, found {', '.join(value_keys)}; a waveform may claim only {SD}vitalsigns")
        elif p in PANEL_PROFILES and PANEL_PROFILES[p] not in codes:
            err(f"{path}.code", f"profile {p} requires LOINC {PANEL_PROFILES[p]}")
    return out


def project_checks(resource: Any, path: str | None = None) -> list[Issue]:
    """The project's own rules for one resource (recursing into Bundle entries)."""
    if not isinstance(resource, dict):
        return [Issue("error", "project", path or "$", "not a JSON object")]
    rtype = resource.get("resourceType")
    path = path or str(rtype)
    out: list[Issue] = []
    if rtype == "Bundle":
        for i, e in enumerate(resource.get("entry") or []):
            if isinstance(e, dict) and isinstance(e.get("resource"), dict):
                out += project_checks(e["resource"], f"{path}.entry[{i}].resource")
        return out
    for (t, element), codes in REQUIRED_CODES.items():
        if rtype == t and element in resource and resource[element] not in codes:
            out.append(Issue("error", "project", f"{path}.{element}", f"{resource[element]!r} is not in the required value set ({' | '.join(sorted(codes))})"))
    if rtype in IDENTIFIED_TYPES:
        for i, ident in enumerate(resource.get("identifier") or []):
            if isinstance(ident, dict) and (not ident.get("system") or not ident.get("value")):
                out.append(Issue("error", "project", f"{path}.identifier[{i}]", "identifiers must have both system and value (searched as system|value)"))
    if rtype == "Device":
        ref = (resource.get("patient") or {}).get("reference")
        if ref is not None and not (isinstance(ref, str) and (ref.startswith("Patient/") or ref.startswith("urn:uuid:"))):
            out.append(Issue("error", "project", f"{path}.patient", f"Device.patient must reference a Patient, got {ref!r}"))
    if rtype == "Observation":
        out += check_observation(resource, path)
    return out


# ----------------------------------------------------------------- fhirkit

def fhirkit_checks(resource: Any) -> list[Issue]:
    import fhirkit  # imported lazily so --no-fhirkit works without it

    try:
        issues = fhirkit.validate(resource)
    except fhirkit.ParseError as e:  # only for str/bytes input
        return [Issue("error", "fhirkit", "$", f"not JSON: {e}")]
    return [Issue(i.severity, "fhirkit", i.path, i.message) for i in issues]


def validate_resource(resource: Any, use_fhirkit: bool = True, use_project: bool = True) -> list[Issue]:
    out: list[Issue] = []
    if use_fhirkit:
        out += fhirkit_checks(resource)
    if use_project:
        out += project_checks(resource)
    return out


# ----------------------------------------------------------------- input


def _records_from_text(text: str, where: str, ndjson: bool) -> Iterator[tuple[str, Any]]:
    """Yields (location, parsed JSON or an Issue for unparseable input)."""
    stripped = text.strip()
    if not ndjson:
        try:
            yield where, json.loads(stripped)
            return
        except json.JSONDecodeError:
            if "\n" not in stripped:
                yield where, Issue("error", "input", where, "not valid JSON")
                return
            # fall through: maybe NDJSON without the extension
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{where}:{n}", json.loads(line)
        except json.JSONDecodeError as e:
            yield f"{where}:{n}", Issue("error", "input", f"{where}:{n}", f"not valid JSON: {e}")


def iter_inputs(paths: list[str], server: str | None) -> Iterator[tuple[str, Any]]:
    if server:
        url = server.rstrip("/") + "/$test/export"
        with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 (loopback test server)
            yield from _records_from_text(r.read().decode("utf-8"), url, True)
    for p in paths:
        if p == "-":
            yield from _records_from_text(sys.stdin.read(), "<stdin>", False)
            continue
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in (".json", ".ndjson"))
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(p)
        for f in files:
            yield from _records_from_text(f.read_text(encoding="utf-8"), str(f), f.suffix == ".ndjson")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Validate FHIR R4 resources (fhirkit + iomt-edge project checks).")
    ap.add_argument("paths", nargs="*", help="files (.json, .ndjson) or directories; - for stdin")
    ap.add_argument("--server", help="FHIR test server root URL: validate everything in its store")
    ap.add_argument("--no-fhirkit", action="store_true", help="run only the project checks")
    ap.add_argument("--no-project-checks", action="store_true", help="run only fhirkit")
    ap.add_argument("--json", action="store_true", help="print issues as JSON lines")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only problems and the summary")
    a = ap.parse_args(argv)
    if not a.paths and not a.server:
        ap.error("give at least one PATH or --server")
    if not a.no_fhirkit:
        try:
            import fhirkit  # noqa: F401
        except ImportError:
            print("validate.py: the fhirkit module is missing: pip install -r tests/fhir-server/requirements.txt "
                  "(or run tests/fhir-server/validate.sh), or pass --no-fhirkit", file=sys.stderr)
            return 2
    n = errors = warnings = notes = 0
    try:
        for where, item in iter_inputs(a.paths, a.server):
            n += 1
            if isinstance(item, Issue):
                issues = [item]
            else:
                issues = validate_resource(item, not a.no_fhirkit, not a.no_project_checks)
            label = where
            if isinstance(item, dict):
                label += f" {item.get('resourceType')}/{item.get('id', '-')}"
            errors += sum(i.severity == "error" for i in issues)
            warnings += sum(i.severity == "warning" for i in issues)
            notes += sum(i.severity == "note" for i in issues)
            if a.json:
                for i in issues:
                    print(json.dumps({"where": where, "severity": i.severity, "source": i.source, "path": i.path, "message": i.message}))
            elif issues or not a.quiet:
                print(f"{label}: {'ok' if not issues else ''}".rstrip())
                for i in issues:
                    print(f"  {i}")
    except (OSError, ValueError) as e:
        print(f"validate.py: {e}", file=sys.stderr)
        return 2
    print(f"validated {n} resource(s): {errors} error(s), {warnings} warning(s), {notes} note(s)", file=sys.stderr if a.json else sys.stdout)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
