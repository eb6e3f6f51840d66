"""Owns loading one text task from a Hugging Face dataset (``from_hub``; needs network)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from clbench.errors import DataUnavailableError
from scenarios._common import DATA_SEED, TextExample, TextTask, carve_validation


def _hub_offline() -> bool:
    flags = (os.environ.get(v, "").lower() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f in ("1", "true", "yes", "on") for f in flags)


def from_hub(dataset_id: str, config: str | None = None, *, text_field: str = "text",
             label_field: str = "label", name: str | None = None, family: str = "hub",
             instruction: str = "", val_fraction: float = 0.1, seed: int = DATA_SEED) -> TextTask:
    """One task from a Hugging Face dataset with ``train`` and ``test`` splits (needs network).

    Validation is the ``validation``/``valid``/``dev`` split when there is one, else carved from
    train. Integer labels are mapped to their ``ClassLabel`` names.

    Raises:
        DataUnavailableError: offline (``HF_HUB_OFFLINE=1``), ``datasets`` missing, or any loading
            failure; the message names the dataset and the local-directory alternative.
    """
    hint = ("use a local copy instead: scenario.data_dir=<dir> pointing at a folder in the LFPT5, "
            "O-LoRA CL_Benchmark or TRACE layout (see scenarios/text_data.py)")
    if _hub_offline():
        raise DataUnavailableError(f"cannot load {dataset_id!r} from the Hugging Face hub: "
                                   f"HF_HUB_OFFLINE is set; {hint}")
    try:
        ds = importlib.import_module("datasets").load_dataset(dataset_id, config)
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        detail = " ".join(str(exc).split())[:200]
        raise DataUnavailableError(f"cannot load {dataset_id!r} from the Hugging Face hub "
                                   f"({type(exc).__name__}: {detail}); {hint}") from exc
    if "train" not in ds or "test" not in ds:
        raise DataUnavailableError(f"{dataset_id!r} has splits {list(ds)}; needs train and test")
    names = getattr(getattr(ds["train"], "features", {}).get(label_field), "names", None)
    conv = {s: _hub_rows(ds[s], text_field, label_field, names) for s in ds}
    val_split = next((s for s in ("validation", "valid", "dev") if s in conv), None)
    train, val = (conv["train"], conv[val_split]) if val_split else \
        carve_validation(conv["train"], val_fraction, seed)
    labels = tuple(names) if names else tuple(sorted({e.label for e in conv["train"]}))
    prov = {"source": "hub", "dataset_id": dataset_id, "config": config,
            "val_source": val_split or f"carved from train (fraction={val_fraction}, seed={seed})"}
    return TextTask(name or dataset_id.split("/")[-1].lower(), family, labels, instruction, train,
                    val, conv["test"], prov)


def _hub_rows(rows: Iterable[Mapping[str, Any]], text_field: str, label_field: str,
              names: Sequence[str] | None) -> tuple[TextExample, ...]:
    def label(v: Any) -> str:
        return names[v] if names is not None and isinstance(v, int) and 0 <= v < len(names) else str(v)

    return tuple(TextExample(str(r[text_field]), label(r[label_field])) for r in rows)
