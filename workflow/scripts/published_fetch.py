"""Rule published_fetch: download (URL base) or copy (local folder) one published zip and verify
its SHA-256 before it appears under resources/.

A zip without a known checksum (sha256: null in the config) has it recorded on first fetch in
``params.checksum_record`` (kept outside the rule's outputs, so it survives a re-fetch) and is
checked against that record afterwards.
"""

import os
import re
import shutil
import urllib.request
from pathlib import Path

from _logging import logged

with logged(snakemake) as log:  # noqa: F821
    from valuescale.analysis.ingest import sha256_file

    sm = snakemake  # noqa: F821
    name = sm.wildcards.name
    source = sm.config["published_source"].rstrip("/")
    out = Path(sm.output[0])
    part = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    if re.match(r"^https?://", source):
        url = f"{source}/{name}.zip"
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=120) as response, open(part, "wb") as f:
            shutil.copyfileobj(response, f)
    else:
        origin = Path(source) / f"{name}.zip"
        log.info("copying %s", origin)
        shutil.copyfile(origin, part)

    actual = sha256_file(part)
    expected = sm.params.sha256
    record = Path(sm.params.checksum_record)
    if expected is None and record.is_file():
        expected = record.read_text().split()[0]
        log.info("checking %s.zip against the checksum recorded on first fetch (%s)", name, record)
    if expected is None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(f"{actual}  {name}.zip\n")
        log.warning(
            "%s.zip has no known SHA-256; recorded %s in %s (add it to the config as "
            "published.zips.%s.sha256)",
            name,
            actual,
            record,
            name,
        )
    elif actual != expected.lower():
        part.unlink()
        raise ValueError(
            f"{name}.zip from {source}: SHA-256 mismatch: expected {expected.lower()}, got {actual}"
        )
    os.replace(part, out)
    log.info("%s.zip ok (sha256 %s)", name, actual)
