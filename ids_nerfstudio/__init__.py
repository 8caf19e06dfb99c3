"""ids-nerfstudio: text-driven editing of NeRF scenes by score distillation (IDS, SDS, DDS, CDS, PDS, CSD)."""

__version__ = "0.1.0"
