"""Files in and out: decoding images, atomic writes, COCO, label PNGs, previews, run folders."""
