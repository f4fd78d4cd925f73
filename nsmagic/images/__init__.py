"""Container images in the ecosystem's formats: pull, push, export, list, remove, prune, lease."""

from nsmagic.images.api import (
    Image,
    ImageInfo,
    LayerInfo,
    export,
    get,
    images,
    lease,
    prune,
    pull,
    push,
    remove,
)
from nsmagic.images.config import ImageConfig
from nsmagic.images.errors import DigestMismatch, ImageError, NoSpace
from nsmagic.images.progress import Progress
from nsmagic.images.reference import parse as parse_reference
from nsmagic.images.store import Store

__all__ = ["DigestMismatch", "Image", "ImageConfig", "ImageError", "ImageInfo", "LayerInfo",
           "NoSpace", "Progress", "Store", "export", "get", "images", "lease",
           "parse_reference", "prune", "pull", "push", "remove"]
