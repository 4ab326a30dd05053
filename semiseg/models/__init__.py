"""Models: DINOv2 encoder (timm), DPT head, the Segmentor that joins them, and checkpoint loading."""

from semiseg.models.loading import build_model, export_model, load_model
from semiseg.models.segmentor import Segmentor

__all__ = ["Segmentor", "build_model", "export_model", "load_model"]
