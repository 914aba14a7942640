"""Read JSONL / JSON / CSV / TSV / Parquet files and Hugging Face datasets into ``Example`` rows.

Rows are numbered as a person counts them: JSONL and CSV by the line number an editor shows (a CSV header is line 1),
Parquet by 1-based row, JSON arrays by 1-based item. Row ids default to ``<file name>:<number>``. How a row's fields
become input, target and meta is ``data.format`` (``data/row_formats.py``: named fields, Alpaca rows or messages).
"""

from __future__ import annotations

import codecs
import csv
import json
from pathlib import Path

from lmtailor.core.example import Example
from lmtailor.data.row_formats import row_reader
from lmtailor.data.validate import DataError, Problems, Record, records_to_examples

REENCODE_HINT = ("save the file as UTF-8, e.g. `iconv -f WINDOWS-1252 -t UTF-8 {name} > {stem}.utf8{suffix}` "
                 "(replace WINDOWS-1252 by the file's real encoding), or in a spreadsheet choose 'CSV UTF-8'")


def _decode_lines(data: bytes, path: Path, problems: Problems) -> list[str | None]:
    """Decode each line as UTF-8; a bad line becomes ``None`` and a problem naming its line and byte offset."""
    offset = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    lines: list[str | None] = []
    for number, raw in enumerate(data[offset:].split(b"\n"), 1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            problems.add(f"line {number}", f"byte 0x{raw[e.start]:02x} at byte offset {offset + e.start} "
                         f"(column {e.start + 1}) is not valid UTF-8",
                         REENCODE_HINT.format(name=path.name, stem=path.stem, suffix=path.suffix), row=number)
            lines.append(None)
        offset += len(raw) + 1
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start another
    return lines


def _jsonl_records(lines: list[str | None], problems: Problems) -> list[Record]:
    records = []
    for number, line in enumerate(lines, 1):
        if line is None or not line.strip():
            continue
        where = f"line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            problems.add(where, f"not valid JSON ({e.msg} at column {e.colno}): {line.strip()[:80]!r}",
                         "each line of a .jsonl file must be one JSON object, e.g. "
                         '{"input": "...", "target": "..."}', row=number)
            continue
        if not isinstance(obj, dict):
            problems.add(where, f"a JSON {type(obj).__name__}, not an object with fields",
                         'each line must be a JSON object, e.g. {"input": "...", "target": "..."}', row=number)
            continue
        if not (_may_hold_surrogates(line) and _lone_surrogates(obj, where, number, problems)):
            records.append(Record(number, where, obj))
    return records


SURROGATE_HINT = ("a \\uXXXX escape between \\ud800 and \\udfff is half of a UTF-16 pair and no character by itself: "
                  "write the character itself, or both halves of its pair (e.g. \\ud83d\\ude00), or remove it")


def _may_hold_surrogates(text: str) -> bool:
    """Whether JSON text has a ``\\uD800``-``\\uDFFF`` escape: the text itself is valid UTF-8, so only an escape can
    make a lone surrogate (a cheap test before checking each field)."""
    return "\\ud" in text.lower()


def _lone_surrogates(obj: dict, where: str, number: int, problems: Problems) -> bool:
    """Record a problem for each field whose text holds a lone surrogate (JSON lets ``\\udbff`` through; no UTF-8
    writer, tokenizer or hash of the row can take it); True when there was one."""
    found = False
    for key, value in obj.items():
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            bad = e.object[e.start:e.end]
            problems.add(f"{where}, field {key!r}", f"holds the lone surrogate escape {ascii(bad)[1:-1]}, which is "
                         "not a character", SURROGATE_HINT, row=number)
            found = True
    return found


def _json_records(path: Path, lines: list[str | None], problems: Problems) -> list[Record]:
    """A .json file: an array of objects; a file of one object per line is read as JSON Lines."""
    if problems:
        return []
    text = "\n".join(line for line in lines if line is not None)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several top-level values: JSON Lines saved as .json
            return _jsonl_records(lines, problems)
        problems.add(f"line {e.lineno}", f"not valid JSON ({e.msg} at column {e.colno})",
                     "a .json file must hold one array of objects: [{\"input\": ..., \"target\": ...}, ...]",
                     row=e.lineno)
        return []
    if not isinstance(data, list):
        problems.add("", f"holds a JSON {type(data).__name__}, expected an array of row objects",
                     "write [{\"input\": ..., \"target\": ...}, ...], or one object per line in a .jsonl file")
        return []
    records, escapes = [], _may_hold_surrogates(text)
    for number, obj in enumerate(data, 1):
        if isinstance(obj, dict):
            if not (escapes and _lone_surrogates(obj, f"item {number}", number, problems)):
                records.append(Record(number, f"item {number}", obj))
        else:
            problems.add(f"item {number}", f"a JSON {type(obj).__name__}, not an object with fields", row=number)
    return records


def _csv_records(lines: list[str | None], delimiter: str, problems: Problems) -> list[Record]:
    if problems:  # undecodable bytes: parsing the rest would only add noise
        return []
    # csv's default 128 KB cell limit is no limit on what a row may hold (a long document); the file's length is.
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, sum(len(line) + 1 for line in lines)))
    try:
        return _csv_rows(lines, delimiter, problems)
    except csv.Error as e:  # e.g. a quote opened and never closed, or a NUL byte
        problems.add("", f"cannot be read as {'TSV' if delimiter == chr(9) else 'CSV'} ({e})",
                     "check the quoting: a value with a delimiter, quote or line break must be in double quotes, "
                     "with its own quotes doubled")
        return []
    finally:
        csv.field_size_limit(limit)


def _csv_rows(lines: list[str], delimiter: str, problems: Problems) -> list[Record]:
    reader = csv.reader((line + "\n" for line in lines), delimiter=delimiter)
    header = next(reader, None)
    if not header:
        return []
    header = [h.strip() for h in header]
    repeated = sorted({h for h in header if header.count(h) > 1})
    if repeated:
        problems.add("line 1", f"the header repeats column(s) {', '.join(map(repr, repeated))}",
                     "give every column a distinct name")
        return []
    records, line_no = [], reader.line_num
    for values in reader:
        start, line_no = line_no + 1, reader.line_num  # a quoted value may span several lines
        if not values or values == [""]:
            continue
        if len(values) != len(header):
            problems.add(f"line {start}", f"{len(values)} values but the header has {len(header)} columns",
                         "quote values that contain the delimiter or line breaks", row=start)
            continue
        records.append(Record(start, f"line {start}", dict(zip(header, values))))
    return records


def _parquet_records(path: Path, problems: Problems) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for unreadable files
        problems.add("", f"cannot be read as Parquet ({type(e).__name__}: {e})",
                     "check that the file is a Parquet file (or give it the suffix of its real format)")
        return []
    return [Record(i, f"row {i}", row) for i, row in enumerate(rows, 1)]


def read_records(path: Path, problems: Problems) -> list[Record]:
    """Read the raw rows of a data file; problems (bad bytes, bad JSON, bad CSV lines) go into ``problems``."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_records(path, problems)
    lines = _decode_lines(path.read_bytes(), path, problems)
    if suffix == ".jsonl":
        return _jsonl_records(lines, problems)
    if suffix == ".json":
        return _json_records(path, lines, problems)
    if suffix in (".csv", ".tsv"):
        return _csv_records(lines, "\t" if suffix == ".tsv" else ",", problems)
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet")


def load_file(path: Path, name: str, input_field: str, target_field: str, id_field: str | None = None,
              meta_fields: dict[str, str] | None = None, row_format: str = "fields") -> tuple[list[Example], list[str]]:
    """Load and validate one data file; ``name`` is how rows cite it. Returns (rows, warnings); raises ``DataError``.

    ``row_format`` is ``data.format``: ``fields`` reads ``input_field`` / ``target_field``; ``alpaca`` and
    ``messages`` read their own fields.
    """
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a data file; give the path of one .jsonl, .json, .csv, .tsv or "
                        ".parquet file inside it (relative paths are relative to the experiment file's folder)")
    if not path.is_file():
        raise DataError(f"{path}: no such data file (relative paths are relative to the experiment file's folder)")
    problems = Problems(str(path))  # the full path in messages, the short name in row ids
    records = read_records(path, problems)
    if not records and not problems:
        problems.add("", "the file has no rows", "a data file needs at least one row with the input and target fields")
    reader = row_reader(row_format, input_field, target_field)
    rows, warnings = records_to_examples(records, name, reader, id_field, problems, meta_fields)
    problems.raise_if_any()
    return rows, warnings


def _hf_records(split, target_field: str) -> list[Record]:
    """Rows of one Hugging Face split; ``ClassLabel`` integers become their label names."""
    import datasets

    feature = split.features.get(target_field)
    rows = []
    for i, row in enumerate(split, 1):
        if isinstance(feature, datasets.ClassLabel) and isinstance(row.get(target_field), int):
            value = row[target_field]
            row = {**row, target_field: feature.int2str(value) if value >= 0 else None}  # -1: an unlabeled row
        rows.append(Record(i, f"row {i}", row))
    return rows


def load_hf(spec: str, input_field: str, target_field: str, id_field: str | None = None,
            meta_fields: dict[str, str] | None = None,
            row_format: str = "fields") -> tuple[dict[str, list[Example]], list[str]]:
    """Load ``hf:<dataset>[:<config>]`` with ``datasets.load_dataset``; returns ({split: rows}, warnings).

    Needs the Hugging Face Hub (or a copy in the datasets cache); offline, the error says how to use a file instead.
    """
    name, _, config = spec.partition(":")
    if not name:
        raise DataError("data.source: hf: needs a dataset name, e.g. hf:imdb or hf:glue:sst2")
    try:
        import datasets

        dataset = datasets.load_dataset(name, config or None)
    except Exception as e:  # noqa: BLE001 - network, missing dataset, bad config: all end the same way for the user
        raise DataError(f"hf:{spec}: could not load the Hugging Face dataset ({type(e).__name__}: {str(e)[:300]}). "
                        "Loading hf: datasets needs network access to the Hugging Face Hub, or a copy already in "
                        "the datasets cache (with HF_DATASETS_OFFLINE=1). Offline, export the dataset to a .jsonl "
                        "file on a machine with network and set data.source to that file.") from None
    reader = row_reader(row_format, input_field, target_field)
    answers = reader.answer_field
    out: dict[str, list[Example]] = {}
    warnings: list[str] = []
    for split_name in dataset:
        label = f"{name}/{split_name}"
        problems = Problems(f"hf:{spec} split {split_name!r}")
        records = _hf_records(dataset[split_name], answers)
        if records and all(r.fields.get(answers) is None for r in records):
            warnings.append(f"hf:{spec}: split {split_name!r} has no {answers!r} values (unlabeled); not used")
            continue
        rows, notes = records_to_examples(records, label, reader, id_field, problems, meta_fields)
        problems.raise_if_any()
        out[split_name], warnings = rows, warnings + notes
    return out, warnings
