"""Data: ISIC 2019, folders of images, the embedded demo data, transforms and splits."""
