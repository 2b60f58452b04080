"""Cleaning and output: the four sections merged, response dedup, two-step decontamination, the final split,
the export and the dataset card. One module per asset, read in this order:

    candidates.py     dedup.py       decontam.py            final.py     funnel.py          export.py
    sft_candidates ─► sft_deduped ─► sft_decontaminated ─► sft_final ─► source_funnel ─► sft_export

All of them are unpartitioned (dedup and decontamination look across every source). Each stage streams its input
in `cand_order` batches into its algorithm in `core/` (`core.dedup.StreamingDedup`, `core.decontam.Decontaminator`,
`core.card`), then swaps its table and ledger rows in with `Warehouse.swap` after its blocking checks passed on
the staged rows. `cand_order` is the stable order "earliest row" refers to: section (card order), source, id.
"""

from iimed_assets.assets.cleaning.candidates import sft_candidates
from iimed_assets.assets.cleaning.decontam import DecontamConfig, sft_decontaminated
from iimed_assets.assets.cleaning.dedup import DedupConfig, sft_deduped
from iimed_assets.assets.cleaning.export import ExportConfig, sft_export
from iimed_assets.assets.cleaning.final import FinalConfig, sft_final
from iimed_assets.assets.cleaning.funnel import source_funnel

CLEANING = [sft_candidates, sft_deduped, sft_decontaminated, sft_final, source_funnel, sft_export]

__all__ = ["CLEANING", "DecontamConfig", "DedupConfig", "ExportConfig", "FinalConfig", "sft_candidates",
           "sft_decontaminated", "sft_deduped", "sft_export", "sft_final", "source_funnel"]
