"""Tests of validate.py itself: it must pass the valid fixtures and catch each
broken variant, including the ones structural validators (fhirkit) miss.

Run: tests/fhir-server/.venv/bin/python -m unittest discover -s tests/fhir-server -p 'test_*.py'
(validate.sh --install-only creates the venv). Tests needing fhirkit are
skipped with a reason when it is not installed.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import validate  # noqa: E402

try:
    import fhirkit  # noqa: F401

    HAVE_FHIRKIT = True
except ImportError:
    HAVE_FHIRKIT = False

VALID = HERE / "fixtures" / "valid"


def load(name: str) -> dict:
    return json.loads((VALID / name).read_text(encoding="utf-8"))


def errors(issues, source=None):
    return [i for i in issues if i.severity == "error" and (source is None or i.source == source)]


def mutate(name, fn):
    r = copy.deepcopy(load(name))
    fn(r)
    return r


HR_SD = "observation-hr-sampleddata.json"
HR_Q = "observation-hr-quantity.json"
BP = "observation-bp.json"
SPO2 = "observation-spo2-sampleddata.json"
GLU = "observation-glucose.json"


def _set(path, value):
    def fn(r):
        node = r
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value

    return fn


def _del(path):
    def fn(r):
        node = r
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]

    return fn


# (name, fixture, mutation, expected path fragment, expected message fragment)
PROJECT_CASES = [
    ("data with an unknown token", HR_SD, _set(["valueSampledData", "data"], "72 73 X 75"), "valueSampledData.data", "'X'"),
    ("data with a double space", HR_SD, _set(["valueSampledData", "data"], "72  73 E 75"), "valueSampledData.data", "single spaces"),
    ("data with commas", HR_SD, _set(["valueSampledData", "data"], "72,73,E,75"), "valueSampledData.data", "72,73,E,75"),
    ("data with a trailing space", HR_SD, _set(["valueSampledData", "data"], "72 73 "), "valueSampledData.data", "single spaces"),
    ("data with a leading zero", HR_SD, _set(["valueSampledData", "data"], "072"), "valueSampledData.data", "'072'"),
    ("data missing", HR_SD, _del(["valueSampledData", "data"]), "valueSampledData.data", "missing"),
    ("token count vs dimensions", HR_SD, _set(["valueSampledData", "dimensions"], 3), "valueSampledData.data", "multiple of dimensions=3"),
    ("L without lowerLimit", SPO2, _del(["valueSampledData", "lowerLimit"]), "valueSampledData.lowerLimit", '"L"'),
    ("U without upperLimit", SPO2, _del(["valueSampledData", "upperLimit"]), "valueSampledData.upperLimit", '"U"'),
    ("period zero", HR_SD, _set(["valueSampledData", "period"], 0), "valueSampledData.period", "positive"),
    ("origin without UCUM", HR_SD, _del(["valueSampledData", "origin", "system"]), "valueSampledData.origin", "UCUM"),
    ("heart rate in bpm", HR_Q, _set(["valueQuantity", "code"], "bpm"), "valueQuantity", "/min"),
    ("heart rate origin in bpm", HR_SD, _set(["valueSampledData", "origin", "code"], "bpm"), "valueSampledData.origin", "/min"),
    ("temperature in cel (case)", HR_Q, lambda r: (r["code"]["coding"][0].update(code="8310-5"), r["meta"].pop("profile"), r["valueQuantity"].update(code="cel")), "valueQuantity", "Cel or [degF]"),
    ("spo2 not UCUM system", SPO2, _set(["valueSampledData", "origin", "system"], "http://example.org/units"), "valueSampledData.origin", "%"),
    ("vital sign without category", HR_SD, _del(["category"]), "category", "vital-signs"),
    ("vital sign subject not a Patient", HR_SD, _set(["subject"], {"reference": "Device/fixture-device"}), "subject", "Reference(Patient)"),
    ("vital sign without effective", HR_SD, _del(["effectivePeriod"]), "effective[x]", "effectiveDateTime or effectivePeriod"),
    ("effective period reversed", HR_SD, _set(["effectivePeriod"], {"start": "2024-01-01T00:00:03Z", "end": "2024-01-01T00:00:00Z"}), "effectivePeriod", "after end"),
    ("heartrate profile on SampledData", HR_SD, _set(["meta"], {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]}), "value[x]", "valueQuantity only"),
    ("heartrate profile on the wrong code", HR_Q, lambda r: r["code"]["coding"][0].update(code="9279-1"), "code", "requires LOINC 8867-4"),
    ("BP panel with a top-level value", BP, _set(["valueQuantity"], {"value": 1, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}), "Observation", "top-level value"),
    ("BP panel without diastolic", BP, lambda r: r["component"].pop(1), "component", "diastolic"),
    ("BP component in mmHg", BP, lambda r: r["component"][0]["valueQuantity"].update(code="mmHg"), "component[0].valueQuantity", "mm[Hg]"),
    ("status outside the value set", HR_SD, _set(["status"], "done"), "status", "required value set"),
    ("identifier without system", HR_SD, lambda r: r["identifier"][0].pop("system"), "identifier[0]", "system and value"),
    ("glucose mass code in mmol/L", GLU, _set(["valueQuantity", "code"], "mmol/L"), "valueQuantity", "mg/dL"),
    ("quantity code without system (qty-3)", GLU, lambda r: r["valueQuantity"].pop("system"), "valueQuantity", "qty-3"),
]

# Structural errors that fhirkit must catch (and that the server's validation rejects too).
FHIRKIT_CASES = [
    ("missing status", HR_SD, _del(["status"]), "Observation.status"),
    ("period as a string", HR_SD, _set(["valueSampledData", "period"], "15s"), "Observation.valueSampledData.period"),
    ("dimensions 0", HR_SD, _set(["valueSampledData", "dimensions"], 0), "Observation.valueSampledData.dimensions"),
    ("unknown element", HR_SD, _set(["unknownField"], 1), "Observation.unknownField"),
    ("effectivePeriod as a string", HR_SD, _set(["effectivePeriod"], "2024-01-01"), "Observation.effectivePeriod"),
    ("end not a dateTime", HR_SD, _set(["effectivePeriod", "end"], "yesterday"), "Observation.effectivePeriod.end"),
    ("origin value not a number", HR_SD, _set(["valueSampledData", "origin", "value"], "zero"), "Observation.valueSampledData.origin.value"),
    ("dateTime without timezone", HR_Q, _set(["effectiveDateTime"], "2024-01-01T00:00:05"), "Observation.effectiveDateTime"),
]


class RegexTest(unittest.TestCase):
    def test_accepts_decimals_and_special_values(self):
        for s in ["72", "72 73 E 75", "-1.5e3 0 L U", "0.0 -0 1E+2", "E"]:
            self.assertRegex(s, validate.SAMPLED_DATA_RE, s)

    def test_rejects_bad_separators_and_tokens(self):
        for s in ["", " 72", "72 ", "72  73", "72,73", "72\t73", "X", "01", "1.", ".5", "e", "NaN", "72 e 73"]:
            self.assertIsNone(validate.SAMPLED_DATA_RE.match(s), repr(s))


class ProjectChecksTest(unittest.TestCase):
    def test_valid_fixtures_pass_project_checks(self):
        files = sorted(VALID.glob("*.json"))
        self.assertGreaterEqual(len(files), 7)
        for f in files:
            with self.subTest(f.name):
                self.assertEqual(validate.project_checks(json.loads(f.read_text())), [])

    def test_each_broken_variant_is_caught(self):
        for name, fixture, fn, path_frag, msg_frag in PROJECT_CASES:
            with self.subTest(name):
                found = errors(validate.project_checks(mutate(fixture, fn)), "project")
                self.assertTrue(
                    any(path_frag in i.path and msg_frag in i.message for i in found),
                    f"{name}: expected an error at *{path_frag}* mentioning {msg_frag!r}, got {[str(i) for i in found]}",
                )

    def test_upstream_origin_shape_is_accepted_with_a_note_only_when_the_unit_is_right(self):
        # microsoft/iomt-fhir writes origin {value: 0, unit} (no system, no code): accepted by
        # decision 0005, reported as a note so it is never silent.
        r = mutate(HR_SD, _set(["valueSampledData", "origin"], {"value": 0, "unit": "/min"}))
        issues = validate.project_checks(r)
        self.assertEqual(errors(issues), [], [str(i) for i in issues])
        self.assertEqual(
            [(i.severity, i.path) for i in issues],
            [("note", "Observation.valueSampledData.origin")],
        )
        self.assertIn("microsoft/iomt-fhir", issues[0].message)
        # For a vital sign the unit must still be the allowed UCUM code.
        found = errors(validate.project_checks(mutate(HR_SD, _set(["valueSampledData", "origin"], {"value": 0, "unit": "bpm"}))))
        self.assertTrue(any("/min" in i.message and "'bpm'" in i.message for i in found), [str(i) for i in found])
        # Not the connector's shape (origin not 0, or a code without a system): still an error.
        for origin in ({"value": 1, "unit": "/min"}, {"value": 0, "unit": "/min", "code": "/min"}):
            with self.subTest(origin):
                found = errors(validate.project_checks(mutate(HR_SD, _set(["valueSampledData", "origin"], origin))))
                self.assertTrue(any(i.path.endswith("valueSampledData.origin") for i in found), [str(i) for i in found])

    def test_bundle_entries_are_checked_with_their_path(self):
        bad = mutate(HR_SD, _set(["valueSampledData", "data"], "1,2"))
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": load("patient.json")}, {"resource": bad}]}
        found = errors(validate.project_checks(bundle))
        self.assertEqual(len(found), 1, [str(i) for i in found])
        self.assertEqual(found[0].path, "Bundle.entry[1].resource.valueSampledData.data")


@unittest.skipUnless(HAVE_FHIRKIT, "fhirkit-rs not installed (run validate.sh --install-only)")
class FhirkitTest(unittest.TestCase):
    def test_valid_fixtures_pass_fhirkit(self):
        for f in sorted(VALID.glob("*.json")):
            with self.subTest(f.name):
                self.assertEqual(validate.fhirkit_checks(json.loads(f.read_text())), [])

    def test_structural_errors_are_caught(self):
        for name, fixture, fn, path in FHIRKIT_CASES:
            with self.subTest(name):
                found = errors(validate.validate_resource(mutate(fixture, fn)), "fhirkit")
                self.assertIn(path, [i.path for i in found], [str(i) for i in found])

    def test_fhirkit_misses_what_the_project_checks_catch(self):
        # Why the project checks exist: fhirkit 0.1.0 accepts these.
        for value in ["72 73 X 75", "72  73 E 75", "72,73,E,75"]:
            r = mutate(HR_SD, _set(["valueSampledData", "data"], value))
            self.assertEqual(validate.fhirkit_checks(r), [], value)
            self.assertTrue(errors(validate.project_checks(r)), value)
        r = mutate(HR_Q, _set(["valueQuantity", "code"], "bpm"))
        self.assertEqual(validate.fhirkit_checks(r), [])
        self.assertTrue(errors(validate.project_checks(r)))


class CliTest(unittest.TestCase):
    def run_cli(self, *args, stdin=None):
        cmd = [sys.executable, str(HERE / "validate.py"), *args]
        if not HAVE_FHIRKIT:
            cmd.append("--no-fhirkit")
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)

    def test_valid_directory_exits_zero(self):
        p = self.run_cli(str(VALID))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("validated 7 resource(s): 0 error(s), 0 warning(s), 0 note(s)", p.stdout)

    def test_broken_files_exit_one_with_messages(self):
        with tempfile.TemporaryDirectory() as d:
            Path(d, "good.json").write_text((VALID / "patient.json").read_text())
            bad = mutate(HR_SD, _set(["valueSampledData", "data"], "72  73"))
            Path(d, "bad.json").write_text(json.dumps(bad))
            lines = [json.dumps(load("device.json")), json.dumps(mutate(HR_Q, _set(["valueQuantity", "code"], "bpm")))]
            Path(d, "out.ndjson").write_text("\n".join(lines) + "\n")
            Path(d, "junk.json").write_text("{not json")
            p = self.run_cli(d)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("bad.json Observation/fixture-hr-sd:", p.stdout)
        self.assertIn("Observation.valueSampledData.data", p.stdout)
        self.assertIn("out.ndjson:2 Observation/fixture-hr-qty:", p.stdout)
        self.assertIn("junk.json", p.stdout)
        self.assertIn("not valid JSON", p.stdout)
        self.assertIn("validated 5 resource(s): 3 error(s)", p.stdout)

    @unittest.skipUnless(HAVE_FHIRKIT, "fhirkit-rs not installed")
    def test_structural_error_on_stdin_exits_one(self):
        bad = mutate(HR_SD, _set(["valueSampledData", "period"], "15s"))
        p = self.run_cli("-", stdin=json.dumps(bad))
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("error [fhirkit] Observation.valueSampledData.period", p.stdout)

    def test_missing_path_exits_two(self):
        p = self.run_cli("/nonexistent/path.json")
        self.assertEqual(p.returncode, 2, p.stdout + p.stderr)


if __name__ == "__main__":
    unittest.main()
