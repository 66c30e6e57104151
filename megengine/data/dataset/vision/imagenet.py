"""ImageNet: ILSVRC2012 classification from train/ and val/ class folders, extracted from the raw tars on first use."""
import os
import pickle
import shutil
import tarfile

from ....logger import get_logger
from .folder import ImageFolder
from .utils import calculate_md5, default_dataset_root

__all__ = ["ImageNet"]

logger = get_logger(__name__)


def _extract(archive, target, mode="r:"):
    """Extract ``archive`` into ``target`` (members outside it are refused)."""
    with tarfile.open(archive, mode) as tar:
        tar.extractall(target, filter="data")


class ImageNet(ImageFolder):
    r"""`ImageNet <https://image-net.org/>`_ ILSVRC2012 classification.

    Expected under ``root``::

        train/<wnid>/<image>        # class folders, or ILSVRC2012_img_train.tar to extract
        val/<wnid>/<image>          # class folders, or ILSVRC2012_img_val.tar to extract
        ILSVRC2012_devkit_t12/data/meta.mat
        ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt
                                    # or ILSVRC2012_devkit_t12.tar.gz; needed to extract val
                                    # and for ``meta``

    Items are ``(image, label)`` as in :class:`~.ImageFolder`: an (H, W, 3) uint8 BGR image and
    the index of its wnid among the sorted class folders (0-999 on the full set).

    Args:
        root: the dataset directory; ``None`` means ``<default_dataset_root>/ImageNet``.
        train: the train split, else the validation split.
        kwargs: passed to :class:`~.ImageFolder` (``check_valid_func``, ``class_name``).

    When the split's folder is missing and the raw tars are in ``root``, they are checked
    against their md5 sums and extracted (hours for train; run it in one process, not under
    ``megengine.distributed``); the validation images are then moved into wnid folders by the
    devkit's ground truth.
    """

    raw_file_meta = {
        "train": ("ILSVRC2012_img_train.tar", "1d675b47d978889d74fa0da5fadfb00e"),
        "val": ("ILSVRC2012_img_val.tar", "29b22e2961454d5413ddabcf34fc5622"),
        "devkit": ("ILSVRC2012_devkit_t12.tar.gz", "fa75699e90414af021442c21a62c3abf"),
    }
    default_train_dir = "train"
    default_val_dir = "val"
    default_devkit_dir = "ILSVRC2012_devkit_t12"

    def __init__(self, root: str = None, train: bool = True, **kwargs):
        root = os.path.join(default_dataset_root(), type(self).__name__) if root is None else root
        root = os.path.expanduser(os.fspath(root))
        if not os.path.isdir(root):
            raise FileNotFoundError("ImageNet: directory {} does not exist".format(root))
        self.devkit_dir = os.path.join(root, self.default_devkit_dir)
        self.train = train
        self.target_folder = os.path.join(root, self.default_train_dir if train else self.default_val_dir)
        if not os.path.isdir(self.target_folder):
            self._prepare(root)
        # as upstream, ``root`` ends up the split folder; the dataset directory is ``root_dir``
        super().__init__(self.target_folder, **kwargs)

    @property
    def valid_ground_truth(self):
        """The devkit's validation labels: one ILSVRC2012 class id (1-1000) per validation image,
        in file name order."""
        path = os.path.join(self.devkit_dir, "data", "ILSVRC2012_validation_ground_truth.txt")
        if not os.path.isfile(path):
            raise FileNotFoundError("ImageNet: validation ground truth {} does not exist; extract "
                                    "{} into {}".format(path, self.raw_file_meta["devkit"][0], self.root_dir))
        with open(path, "r") as f:
            return [int(line) for line in f if line.strip()]

    @property
    def root_dir(self):
        """The dataset directory (the one holding train/, val/ and the devkit)."""
        return os.path.dirname(self.devkit_dir)

    @property
    def meta(self):
        """``(idx_to_wnid, wnid_to_classes)``: ILSVRC2012 class id -> wnid (``"n01440764"``), and
        wnid -> its tuple of class names, for the 1000 leaf classes of the devkit's ``meta.mat``
        (read with SciPy once, then cached in ``<devkit>/meta.pkl``)."""
        cache = os.path.join(self.devkit_dir, "meta.pkl")
        if os.path.isfile(cache):
            with open(cache, "rb") as f:
                return pickle.load(f)
        mat_path = os.path.join(self.devkit_dir, "data", "meta.mat")
        if not os.path.isfile(mat_path):
            raise FileNotFoundError("ImageNet: meta file {} does not exist; extract {} into {}".format(
                mat_path, self.raw_file_meta["devkit"][0], self.root_dir))
        try:
            import scipy.io
        except ImportError:
            raise ImportError("reading ImageNet's meta.mat needs SciPy: pip install scipy") from None
        synsets = scipy.io.loadmat(mat_path, squeeze_me=True)["synsets"]
        idx_to_wnid, wnid_to_classes = {}, {}
        for synset in synsets:
            # fields: ILSVRC2012_ID, WNID, words, gloss, num_children, ...; the leaves are the
            # 1000 classes
            if int(synset["num_children"]) != 0:
                continue
            idx, wnid = int(synset["ILSVRC2012_ID"]), str(synset["WNID"])
            idx_to_wnid[idx] = wnid
            wnid_to_classes[wnid] = tuple(str(synset["words"]).split(", "))
        meta = (idx_to_wnid, wnid_to_classes)
        logger.info("saving cached meta file to %s", cache)
        with open(cache, "wb") as f:
            pickle.dump(meta, f)
        return meta

    def check_raw_file(self) -> bool:
        """Whether all three raw archives are in the dataset directory."""
        return all(os.path.isfile(os.path.join(self.root_dir, name)) for name, _ in self.raw_file_meta.values())

    def _prepare(self, root):
        split = "train" if self.train else "val"
        logger.warning("image folder %s does not exist, extracting it from the raw files", self.target_folder)
        needed = [self.raw_file_meta[split][0]] + ([] if self.train else [self.raw_file_meta["devkit"][0]])
        missing = [n for n in needed if not os.path.isfile(os.path.join(root, n))]
        if not self.train and os.path.isdir(self.devkit_dir):
            missing = [n for n in missing if n != self.raw_file_meta["devkit"][0]]
        if missing:
            raise FileNotFoundError("ImageNet: image folder {} does not exist and the raw files {} "
                                    "are not in {}".format(self.target_folder, missing, root))
        from ....distributed.group import is_distributed  # only here: it loads torch

        if is_distributed():
            raise RuntimeError("ImageNet: extract the raw files in a single process first; "
                               "extracting them under megengine.distributed would race")
        if self.train:
            self._prepare_train(root)
        else:
            if not os.path.isdir(self.devkit_dir):
                self._prepare_devkit(root)
            self._prepare_val(root)

    def _checked(self, root, key):
        name, md5 = self.raw_file_meta[key]
        path = os.path.join(root, name)
        logger.info("checking md5 of %s ...", path)
        got = calculate_md5(path)
        if got != md5:
            raise RuntimeError("ImageNet: md5 of {} is {}, expected {}; the file is damaged or not "
                               "the ILSVRC2012 release".format(path, got, md5))
        return path

    def _prepare_devkit(self, root):
        _extract(self._checked(root, "devkit"), root, "r:gz")

    def _prepare_train(self, root):
        # the train tar holds one tar per class: <wnid>.tar -> train/<wnid>/
        archive = self._checked(root, "train")
        partial = self.target_folder + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        logger.info("extracting %s; this takes hours on the full set", archive)
        _extract(archive, partial)
        for name in sorted(os.listdir(partial)):
            inner = os.path.join(partial, name)
            if name.endswith(".tar"):
                _extract(inner, os.path.splitext(inner)[0])
                os.remove(inner)
        # the folder appears only when complete, so an interrupted run starts over
        os.rename(partial, self.target_folder)

    def _prepare_val(self, root):
        archive = self._checked(root, "val")
        idx_to_wnid = self.meta[0]
        labels = self.valid_ground_truth
        partial = self.target_folder + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        _extract(archive, partial)
        images = sorted(os.listdir(partial))
        if len(images) != len(labels):
            raise RuntimeError("ImageNet: {} has {} images but the ground truth has {} labels".format(
                archive, len(images), len(labels)))
        for image, label in zip(images, labels):
            wnid_dir = os.path.join(partial, idx_to_wnid[label])
            os.makedirs(wnid_dir, exist_ok=True)
            shutil.move(os.path.join(partial, image), os.path.join(wnid_dir, image))
        os.rename(partial, self.target_folder)
