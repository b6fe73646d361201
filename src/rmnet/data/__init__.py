"""Data: ISIC 2019, folders of images, the embedded demo data, transforms, splits and the resize cache."""

from rmnet.data.cache import prepare_cache
from rmnet.data.dataset import ImageDataset, TensorImageDataset
from rmnet.data.digits import load_digits_tensors
from rmnet.data.images import UnreadableImageError, open_rgb
from rmnet.data.isic import ISIC_CLASSES, load_isic2019
from rmnet.data.lesions import LESION_KINDS, make_lesion_dataset, render_lesion
from rmnet.data.preview import save_contact_sheet
from rmnet.data.sources import load_image_table
from rmnet.data.split import Split, load_split, make_split, match_split, save_split
from rmnet.data.table import ImageTable
from rmnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ISIC_CLASSES",
    "LESION_KINDS",
    "ImageDataset",
    "ImageTable",
    "Split",
    "TensorImageDataset",
    "UnreadableImageError",
    "build_transform",
    "load_digits_tensors",
    "load_image_table",
    "load_isic2019",
    "load_split",
    "make_lesion_dataset",
    "make_split",
    "match_split",
    "open_rgb",
    "prepare_cache",
    "render_lesion",
    "save_contact_sheet",
    "save_split",
]
