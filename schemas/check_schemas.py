#!/usr/bin/env python3
"""Check the Rapport Avro and JSON schemas and their examples.

Run from anywhere:  python3 schemas/check_schemas.py

For every schemas/v*/ directory:

* every ``*.avsc`` must parse with ``fastavro.parse_schema``; its Parsing
  Canonical Form (cross-checked against an independent implementation of the
  spec) and CRC-64-AVRO (Rabin) fingerprint are printed, as used in the Avro
  single-object encoding header (``C3 01`` + 8 fingerprint bytes), together
  with the different value apache-avro (Rust) computes when a schema has
  logical types;
* every ``<name>.avsc`` must have a ``<name>.schema.json`` (JSON Schema draft
  2020-12) whose fields, required lists and enum symbols agree with the Avro
  schema;
* every ``examples/<name>/*.json`` is normalised against ``<name>.avsc``
  (defaults filled in, RFC 3339 timestamps converted to epoch millis, unknown
  fields rejected), round-tripped through ``schemaless_writer`` /
  ``schemaless_reader`` and through single-object encoding in memory, and must
  decode to the same record;
* if ``jsonschema`` is importable, every example is validated against
  ``<name>.schema.json`` (otherwise that part is skipped with a note), and a few
  inputs that must be rejected (or accepted) by the v1 touchpoint JSON Schema
  are checked.

Needs only ``fastavro`` (``pip install fastavro``); ``jsonschema`` is optional.
Exit status: 0 when every check passed, 1 on any failure, 2 if fastavro is
missing.
"""

import copy
import datetime
import io
import json
import re
import sys
from pathlib import Path

try:
    import fastavro
    from fastavro.schema import fingerprint, to_parsing_canonical_form
except ImportError:
    print("fastavro is not installed: pip install fastavro", file=sys.stderr)
    sys.exit(2)

try:
    import jsonschema
except ImportError:
    jsonschema = None

SCHEMAS_DIR = Path(__file__).resolve().parent
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
ONE_MS = datetime.timedelta(milliseconds=1)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"
)
PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
JSON_TYPE_OF = {
    "null": "null",
    "boolean": "boolean",
    "int": "integer",
    "long": "integer",
    "float": "number",
    "double": "number",
    "string": "string",
    "bytes": "string",
}


class CheckError(Exception):
    pass


def rel(path):
    try:
        return str(path.relative_to(SCHEMAS_DIR.parent))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------
# Avro schema walking (works on the raw .avsc JSON; named types are resolved
# through a table filled in as they are defined)
# --------------------------------------------------------------------------


def full_name(schema, namespace):
    name = schema["name"]
    if "." in name:
        return name, name.rsplit(".", 1)[0]
    ns = schema.get("namespace", namespace)
    return (f"{ns}.{name}" if ns else name), ns


def resolve(schema, names, namespace):
    """Return (schema dict, namespace) with named references resolved."""
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return {"type": schema}, namespace
        key = schema if "." in schema else (f"{namespace}.{schema}" if namespace else schema)
        if key in names:
            return names[key]
        if schema in names:
            return names[schema]
        raise CheckError(f"unknown named type {schema!r}")
    if isinstance(schema, list):
        return {"type": "union", "branches": schema}, namespace
    if isinstance(schema.get("type"), (list, dict)):
        return resolve(schema["type"], names, namespace)
    if schema["type"] in ("record", "enum", "fixed"):
        fname, ns = full_name(schema, namespace)
        names[fname] = (schema, ns)
        return schema, ns
    return schema, namespace


def rfc3339_to_millis(text, where):
    if not RFC3339.match(text):
        raise CheckError(f"{where}: {text!r} is not an RFC 3339 timestamp with an offset")
    # Python < 3.11 does not accept "Z" or arbitrary fraction lengths.
    m = re.match(r"^(.*[Tt]\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$", text)
    base, frac, off = m.group(1), m.group(2) or "", m.group(3)
    off = "+00:00" if off in "Zz" else off
    dt = datetime.datetime.fromisoformat(base.replace("t", "T") + off)
    micros = int((frac + "000000")[:6]) if frac else 0
    dt = dt.replace(microsecond=micros)
    return (dt - EPOCH) // ONE_MS


def normalize(schema, datum, names, namespace, where):
    """Validate an example value against the Avro schema and return the value
    fastavro should decode it to: defaults filled in, RFC 3339 timestamps
    turned into epoch milliseconds, unknown record fields rejected."""
    s, ns = resolve(schema, names, namespace)
    t = s["type"]

    if t == "union":
        branches = s["branches"]
        if datum is None:
            if "null" in branches:
                return None
            raise CheckError(f"{where}: null is not allowed here")
        errors = []
        for b in branches:
            if b == "null":
                continue
            try:
                return normalize(b, datum, names, ns, where)
            except CheckError as e:
                errors.append(str(e))
        raise CheckError("; ".join(errors) or f"{where}: no union branch matches")

    if t == "record":
        if not isinstance(datum, dict):
            raise CheckError(f"{where}: expected an object for record {s['name']}")
        field_names = [f["name"] for f in s["fields"]]
        unknown = sorted(set(datum) - set(field_names))
        if unknown:
            raise CheckError(f"{where}: unknown field(s) {unknown} for record {s['name']}")
        out = {}
        for f in s["fields"]:
            fw = f"{where}.{f['name']}"
            if f["name"] in datum:
                value = datum[f["name"]]
            elif "default" in f:
                value = copy.deepcopy(f["default"])
            else:
                raise CheckError(f"{fw}: required field is missing")
            out[f["name"]] = normalize(f["type"], value, names, ns, fw)
        return out

    if t == "enum":
        if datum not in s["symbols"]:
            raise CheckError(f"{where}: {datum!r} is not a symbol of enum {s['name']} {s['symbols']}")
        return datum

    if t == "map":
        if not isinstance(datum, dict) or not all(isinstance(k, str) for k in datum):
            raise CheckError(f"{where}: expected an object with string keys")
        return {k: normalize(s["values"], v, names, ns, f"{where}[{k!r}]") for k, v in datum.items()}

    if t == "array":
        if not isinstance(datum, list):
            raise CheckError(f"{where}: expected an array")
        return [normalize(s["items"], v, names, ns, f"{where}[{i}]") for i, v in enumerate(datum)]

    logical = s.get("logicalType")
    if t == "long" and logical in ("timestamp-millis", "local-timestamp-millis"):
        if isinstance(datum, str):
            datum = rfc3339_to_millis(datum, where)
    if t == "null":
        if datum is not None:
            raise CheckError(f"{where}: expected null")
        return None
    if t == "boolean":
        if not isinstance(datum, bool):
            raise CheckError(f"{where}: expected a boolean, got {datum!r}")
        return datum
    if t in ("int", "long"):
        lo, hi = INT32 if t == "int" else INT64
        if isinstance(datum, bool) or not isinstance(datum, int) or not lo <= datum <= hi:
            raise CheckError(f"{where}: expected an Avro {t}, got {datum!r}")
        return datum
    if t in ("float", "double"):
        if isinstance(datum, bool) or not isinstance(datum, (int, float)):
            raise CheckError(f"{where}: expected a number, got {datum!r}")
        return float(datum)
    if t == "string":
        if not isinstance(datum, str):
            raise CheckError(f"{where}: expected a string, got {datum!r}")
        return datum
    raise CheckError(f"{where}: Avro type {t!r} is not supported by this checker")


# Logical types that apache-avro (Rust, at least 0.21 - 0.23) turns into their
# own schema variants; its canonical form then writes the underlying primitive
# as {"type":"long"} instead of "long" (see its avro_4004 test), which changes
# the fingerprint. Only primitives with these logical types are affected.
RUST_LOGICAL = {
    "int": {"date", "time-millis"},
    "long": {"time-micros", "timestamp-millis", "timestamp-micros", "timestamp-nanos",
             "local-timestamp-millis", "local-timestamp-micros", "local-timestamp-nanos"},
    "string": {"uuid"},
}


def canonical_form(schema, namespace=None, seen=None, rust_quirk=False):
    """Parsing Canonical Form per the Avro specification, written independently
    of fastavro so the two can be cross-checked. With rust_quirk=True, emulate
    apache-avro (Rust)'s deviation for primitives with a logical type."""
    seen = set() if seen is None else seen
    q = json.dumps
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return q(schema)
        return q(schema if "." in schema or not namespace else f"{namespace}.{schema}")
    if isinstance(schema, list):
        return "[" + ",".join(canonical_form(b, namespace, seen, rust_quirk) for b in schema) + "]"
    t = schema["type"]
    if isinstance(t, (list, dict)):
        return canonical_form(t, namespace, seen, rust_quirk)
    if t in PRIMITIVES:
        if rust_quirk and schema.get("logicalType") in RUST_LOGICAL.get(t, ()):
            return '{"type":%s}' % q(t)
        return q(t)
    if t == "array":
        return '{"type":"array","items":%s}' % canonical_form(schema["items"], namespace, seen, rust_quirk)
    if t == "map":
        return '{"type":"map","values":%s}' % canonical_form(schema["values"], namespace, seen, rust_quirk)
    fname, ns = full_name(schema, namespace)
    if fname in seen:
        return q(fname)
    seen.add(fname)
    head = '{"name":%s,"type":%s' % (q(fname), q(t))
    if t == "record":
        fields = ",".join(
            '{"name":%s,"type":%s}' % (q(f["name"]), canonical_form(f["type"], ns, seen, rust_quirk))
            for f in schema["fields"]
        )
        return head + ',"fields":[' + fields + "]}"
    if t == "enum":
        return head + ',"symbols":' + json.dumps(schema["symbols"], separators=(",", ":")) + "}"
    if t == "fixed":
        return head + ',"size":%d}' % int(schema["size"])
    raise CheckError(f"canonical form: unsupported type {t!r}")


def from_fastavro(value):
    """Turn fastavro's decoded logical types back into their JSON form."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return (value - EPOCH) // ONE_MS
    if isinstance(value, dict):
        return {k: from_fastavro(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_fastavro(v) for v in value]
    return value


def first_difference(a, b, where="$"):
    if type(a) is not type(b) and not (isinstance(a, (int, float)) and isinstance(b, (int, float))):
        return f"{where}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}.{k}: present on one side only"
            d = first_difference(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{where}: {a!r} != {b!r}"


# --------------------------------------------------------------------------
# Avro <-> JSON Schema agreement
# --------------------------------------------------------------------------


def json_types(node):
    """All JSON types a JSON Schema node admits (looking into oneOf/anyOf)."""
    out = set()
    t = node.get("type")
    if isinstance(t, str):
        out.add(t)
    elif isinstance(t, list):
        out.update(t)
    if "enum" in node:
        for v in node["enum"]:
            out.add("null" if v is None else "string" if isinstance(v, str) else "other")
    for key in ("oneOf", "anyOf"):
        for sub in node.get(key, []):
            out.update(json_types(sub))
    return out


def compare_to_json_schema(schema, node, names, namespace, where):
    s, ns = resolve(schema, names, namespace)
    t = s["type"]
    if t == "union":
        branches = s["branches"]
        if "null" in branches and "null" not in json_types(node):
            raise CheckError(f"{where}: Avro allows null but the JSON Schema does not")
        for b in branches:
            if b != "null":
                compare_to_json_schema(b, node, names, ns, where)
        return
    if t == "record":
        if "object" not in json_types(node):
            raise CheckError(f"{where}: JSON Schema does not admit an object")
        props = node.get("properties", {})
        avro_fields = [f["name"] for f in s["fields"]]
        if set(props) != set(avro_fields):
            raise CheckError(
                f"{where}: fields differ: only in Avro {sorted(set(avro_fields) - set(props))}, "
                f"only in JSON Schema {sorted(set(props) - set(avro_fields))}"
            )
        required = {f["name"] for f in s["fields"] if "default" not in f}
        if set(node.get("required", [])) != required:
            raise CheckError(
                f"{where}: JSON Schema required {sorted(node.get('required', []))} != "
                f"Avro fields without default {sorted(required)}"
            )
        for f in s["fields"]:
            compare_to_json_schema(f["type"], props[f["name"]], names, ns, f"{where}.{f['name']}")
        return
    if t == "enum":
        symbols = [v for v in node.get("enum", []) if v is not None]
        if symbols != s["symbols"]:
            raise CheckError(f"{where}: JSON Schema enum {symbols} != Avro symbols {s['symbols']}")
        return
    if t == "map":
        if "object" not in json_types(node) or not isinstance(node.get("additionalProperties"), dict):
            raise CheckError(f"{where}: expected an object with typed additionalProperties")
        compare_to_json_schema(s["values"], node["additionalProperties"], names, ns, f"{where}{{}}")
        return
    if t == "array":
        if "array" not in json_types(node) or "items" not in node:
            raise CheckError(f"{where}: expected an array with items")
        compare_to_json_schema(s["items"], node["items"], names, ns, f"{where}[]")
        return
    want = JSON_TYPE_OF.get(t)
    have = json_types(node)
    if want not in have and not (want == "number" and "integer" in have):
        raise CheckError(f"{where}: Avro {t} but JSON Schema admits {sorted(have)}")


# --------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def check(self, label, fn):
        try:
            fn()
        except Exception as e:  # report every failure, keep going
            self.fail(label, str(e) if isinstance(e, CheckError) else f"{type(e).__name__}: {e}")
            return False
        self.passed += 1
        print(f"  ok   {label}")
        return True

    def fail(self, label, msg):
        self.failed.append(f"{label}: {msg}")
        print(f"  FAIL {label}: {msg}")


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def json_schema_validator(schema_json):
    cls = jsonschema.validators.validator_for(schema_json)
    cls.check_schema(schema_json)
    checker = getattr(cls, "FORMAT_CHECKER", None) or jsonschema.FormatChecker()
    return cls(schema_json, format_checker=checker)


def json_schema_errors(validator, instance):
    errs = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"$/{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errs]


def run():
    results = Results()
    version_dirs = sorted(
        (d for d in SCHEMAS_DIR.iterdir() if d.is_dir() and re.fullmatch(r"v\d+", d.name)),
        key=lambda d: int(d.name[1:]),
    )
    if not version_dirs:
        print(f"no schemas/v*/ directories under {SCHEMAS_DIR}", file=sys.stderr)
        return 1
    if jsonschema is None:
        print("note: jsonschema is not installed; skipping JSON Schema validation "
              "(pip install jsonschema to enable it)")

    # fingerprint (8 header bytes) -> (label, parsed schema), across all versions,
    # as an engine reading single-object encoded input would look them up
    by_fingerprint = {}
    fingerprints = []
    work = []  # (label, state dict, JSON Schema validator or None, version dir, schema name)

    for vdir in version_dirs:
        print(f"{rel(vdir)}/")
        for avsc in sorted(vdir.glob("*.avsc")):
            name = avsc.stem
            label = rel(avsc)
            state = {}

            def parse(avsc=avsc, state=state):
                raw = load_json(avsc)
                parsed = fastavro.parse_schema(raw, named_schemas={})
                canonical = to_parsing_canonical_form(parsed)
                mine = canonical_form(raw)
                if mine != canonical:
                    raise CheckError("fastavro's parsing canonical form differs from this checker's:\n"
                                     f"    fastavro: {canonical}\n    checker:  {mine}")
                fp_hex = fingerprint(canonical, "CRC-64-AVRO")
                rust_fp_hex = fingerprint(canonical_form(raw, rust_quirk=True), "CRC-64-AVRO")
                state.update(raw=raw, parsed=parsed, canonical=canonical,
                             fp=bytes.fromhex(fp_hex), rust_fp=bytes.fromhex(rust_fp_hex))

            if not results.check(f"{label} parses", parse):
                continue
            fp = state["fp"]
            full = state["parsed"]["name"]
            if fp in by_fingerprint:
                other = by_fingerprint[fp][0]
                results.fail(f"{label} fingerprint", f"collides with {other}")
            else:
                by_fingerprint[fp] = (label, state["parsed"])
            fingerprints.append((label, full, fp, state["rust_fp"]))

            js_path = vdir / f"{name}.schema.json"
            if not js_path.exists():
                results.fail(rel(js_path), "missing (every .avsc needs a matching .schema.json)")
                work.append((label, state, None, vdir, name))
                continue

            if jsonschema is not None:
                def load_validator(js_path=js_path, state=state):
                    state["validator"] = json_schema_validator(load_json(js_path))

                results.check(f"{rel(js_path)} is a valid JSON Schema", load_validator)

            def agree(js_path=js_path, state=state):
                compare_to_json_schema(state["raw"], load_json(js_path), {}, None, "$")

            results.check(f"{rel(js_path)} agrees with {avsc.name}", agree)
            work.append((label, state, state.get("validator"), vdir, name))

        known = {avsc.stem for avsc in vdir.glob("*.avsc")}
        examples_dir = vdir / "examples"
        if examples_dir.is_dir():
            for sub in sorted(p for p in examples_dir.iterdir() if p.is_dir()):
                if sub.name not in known:
                    results.fail(rel(sub), f"no {sub.name}.avsc in {rel(vdir)}")

    for label, state, validator, vdir, name in work:
        examples = sorted((vdir / "examples" / name).glob("*.json"))
        if not examples:
            print(f"{label}: no examples")
            continue
        print(f"{rel(vdir / 'examples' / name)}/ against {label}")
        for ex in examples:
            def roundtrip(ex=ex, state=state, validator=validator):
                original = load_json(ex)
                if validator is not None:
                    errors = json_schema_errors(validator, original)
                    if errors:
                        raise CheckError("JSON Schema: " + "; ".join(errors))
                expected = normalize(state["raw"], original, {}, None, "$")
                parsed = state["parsed"]

                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, parsed, expected, strict=True)
                body = buf.getvalue()
                decoded = from_fastavro(fastavro.schemaless_reader(io.BytesIO(body), parsed))
                diff = first_difference(expected, decoded)
                if diff:
                    raise CheckError(f"Avro round trip changed the record: {diff}")

                # Single-object encoding, in memory only.
                message = SINGLE_OBJECT_MAGIC + state["fp"] + body
                if message[:2] != SINGLE_OBJECT_MAGIC:
                    raise CheckError("single-object: bad magic")
                writer = by_fingerprint.get(message[2:10])
                if writer is None or writer[1] is not parsed:
                    raise CheckError("single-object: fingerprint does not resolve to this schema")
                decoded_so = from_fastavro(
                    fastavro.schemaless_reader(io.BytesIO(message[10:]), writer[1])
                )
                diff = first_difference(expected, decoded_so)
                if diff:
                    raise CheckError(f"single-object round trip changed the record: {diff}")

            what = "JSON Schema + Avro + single-object round trip" if validator else \
                "Avro + single-object round trip"
            results.check(f"{rel(ex)}: {what}", roundtrip)

    # Targeted rules of the v1 touchpoint that the Avro schema cannot express.
    tp = next((w for w in work if w[0] == rel(SCHEMAS_DIR / "v1" / "touchpoint.avsc")), None)
    if tp is not None and tp[2] is not None:
        print("v1 touchpoint JSON Schema rules")
        validator = tp[2]
        base = {"event_id": "evt-test-0001", "customer_id": "c-000042", "channel": "web",
                "event_type": "page_view", "event_time": 1741635727311}

        def expect(instance, valid):
            def fn():
                errors = json_schema_errors(validator, instance)
                if valid and errors:
                    raise CheckError("should be accepted: " + "; ".join(errors))
                if not valid and not errors:
                    raise CheckError("should be rejected but was accepted")
            return fn

        no_ids = {k: v for k, v in base.items() if k != "customer_id"}
        results.check("rejects an event with neither customer_id nor anonymous_id",
                      expect(no_ids, False))
        results.check("rejects customer_id null without anonymous_id",
                      expect(dict(no_ids, customer_id=None, anonymous_id=None), False))
        results.check("accepts anonymous_id alone",
                      expect(dict(no_ids, anonymous_id="anon-1"), True))
        results.check("rejects Avro-JSON union wrapping",
                      expect(dict(base, store_id={"string": "store-0107"}), False))
        results.check("rejects an unknown field", expect(dict(base, customerId="c-1"), False))
        results.check("rejects an unknown enum symbol", expect(dict(base, channel="fax"), False))
        rfc = dict(base, event_time="2025-03-10T19:42:07.311Z")
        results.check("accepts an RFC 3339 event_time", expect(rfc, True))
        results.check("rejects a non-RFC 3339 event_time string",
                      expect(dict(base, event_time="10/03/2025 19:42"), False))

        def rfc_to_avro():
            got = normalize(tp[1]["raw"], rfc, {}, None, "$")["event_time"]
            if got != 1741635727311:
                raise CheckError(f"RFC 3339 event_time converted to {got}, expected 1741635727311")

        results.check("RFC 3339 event_time converts to the same epoch millis", rfc_to_avro)

    print()
    print("CRC-64-AVRO fingerprints of the Parsing Canonical Form (single-object header =")
    print("c3 01 + the 8 bytes below, in this order; u64 = those bytes read little-endian):")
    quirky = []
    for label, full, fp, rust_fp in fingerprints:
        print(f"  {label:<28} {full:<24} {fp.hex()}  (u64 0x{int.from_bytes(fp, 'little'):016x})")
        if rust_fp != fp:
            quirky.append((label, rust_fp))
    if quirky:
        print("apache-avro (Rust) Schema::fingerprint::<Rabin>() gives a different value for")
        print("schemas with logical types (it writes {\"type\":\"long\"} for \"long\" in the")
        print("canonical form); single-object messages from Java/Python producers carry the")
        print("values above, not these:")
        for label, rust_fp in quirky:
            print(f"  {label:<28} {'(apache-avro Rust)':<24} {rust_fp.hex()}")

    print()
    if results.failed:
        print("FAILED:")
        for f in results.failed:
            print(f"  {f}")
    print(f"{results.passed} passed, {len(results.failed)} failed")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(run())
