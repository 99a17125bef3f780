"""The input of a scoring or evaluation run: a dataset's records with ids safe to name files.

Apart from :mod:`changeseg.inference.score` so that evaluation, which runs in one
process, reads its input the same way without importing Ray.
"""

from __future__ import annotations

from changeseg.config import Config
from changeseg.data.layouts import scan_dataset
from changeseg.data.records import PairRecord
from changeseg.inference.naming import UnsafePairId, check_pair_id

__all__ = ["load_input_records"]


def load_input_records(
    input_uri: str, cfg: Config, *, split: str | None = None
) -> tuple[list[PairRecord], list[tuple[str, str]]]:
    """Records of a manifest, shards or a dataset layout at any URI, plus incomplete pairs."""
    scan = scan_dataset(
        input_uri,
        layout=cfg.data.layout,
        split=split or "test",
        fold=cfg.data.fold,
        num_classes=cfg.model.resolved_num_classes(),
        require_masks=False,
        storage_options=cfg.storage,
    )
    records, problems = [], list(scan.problems)
    for record in scan.records:
        if split is not None and record.split != split:
            continue
        try:
            check_pair_id(record.pair_id)
            records.append(record)
        except UnsafePairId as err:  # ids name output files: never let one escape the output folder
            problems.append((str(record.pair_id), str(err)))
    seen: set[str] = set()
    duplicated = sorted({r.pair_id for r in records if r.pair_id in seen or seen.add(r.pair_id)})
    if duplicated:
        raise ValueError(f"{input_uri}: pair ids must be unique, repeated: {', '.join(duplicated[:5])}")
    return records, problems
