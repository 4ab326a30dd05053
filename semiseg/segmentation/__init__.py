"""The segmentation task: one image per sample, mIoU, the four benchmarks and any image/mask folder.

It plugs into the engine through `task.TASK` (registered as the `segmentation` entry point) and adds the
`semiseg` command (`cli`). The engine never imports this package.
"""
