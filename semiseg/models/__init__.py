"""Models: encoder specs (`specs`, no torch), the timm ViT encoder (`encoder`), the DPT head (`dpt`), the
Segmentor that joins them (`segmentor`), and checkpoint loading and export (`checkpoints`).

Import from the modules themselves; this package imports nothing, so reading a spec never loads torch.
"""
