"""Datasets, split files and the shared sample geometry.

The contract every dataset honours (segmentation and change detection alike), so that methods and the trainer
never care where a sample came from or how many images it has:

    sample = {
        "images": tuple of uint8 tensors, each C x H x W (one image, or (before, after)),
        "label":  int64 tensor H x W, class ids, 255 = ignore (all 255 for unlabeled samples),
        "ignore": uint8 tensor H x W, 255 where the crop was padded, else 0,
        "name":   str, an identifier for logs and predictions,
    }

Training samples are fixed-size crops; evaluation samples are whole images (batch size 1 for mixed sizes).
"""
