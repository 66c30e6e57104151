"""Device names in dumped programs: the name a file records for a device, and the device a recorded name means where the file is loaded.

Upstream's dumps record a comp node's *logical* name, the one the program asked for: a value on
the default device is written as ``xpux`` (so a model dumped on a GPU machine loads on one
without a GPU, where ``xpux`` is the CPU), while an explicit ``gpu1`` stays ``gpu1`` and fails
to load where there is no such GPU unless the loader maps it (megbrain's ``comp_node_mapper``;
``mge.load``'s ``map_location``: a name, a dict or a function). Tensors here keep only the
device they resolved to, so `recorded_name` writes the default device's name for every value on
the device the default resolves to, and the device's own name for any other.

Files of format version 1 recorded the resolved device, ``gpu0`` for the default device on a GPU
machine; `device_mapper` reads their ``gpu0`` as ``xpux``, which is what they meant in almost
every program (one run on the default device), so they load on CPU-only machines too.
"""
from ..device import _saved_device_here, canonical_device, get_default_device

__all__ = ["recorded_name", "device_mapper"]


def recorded_name(device):
    """The name a file records for canonical device ``device`` ("cpu0", "gpuN")."""
    default = str(get_default_device())
    try:
        if canonical_device(default) == device:
            return default
    except (ValueError, RuntimeError):  # a default that does not resolve here cannot match
        pass
    return device


def _bare(name):
    """``"gpu0:1"`` -> ``"gpu0"``: a stream suffix names no other device."""
    return str(name).split(":", 1)[0]


def device_mapper(device, version):
    """A function from a device name recorded in a file (format ``version``) to the canonical
    device its values go to here.

    ``device``: None (each value where its recorded name resolves here), a name (every value
    there), a dict ``{recorded name: name}`` (names it does not list resolve as recorded) or a
    function ``recorded name -> name``, as upstream's ``map_location``. A recorded device that
    does not exist here raises a ValueError that names it and says how to map it."""
    if device is not None and not (isinstance(device, (str, dict)) or callable(device)):
        raise TypeError(f"load: device must be a device name, a dict {{recorded name: device}} "
                        f"or a function of the recorded name, got {type(device).__name__}")
    if isinstance(device, dict):
        table = {_bare(k): v for k, v in device.items()}
        for k, v in table.items():
            canonical_device(v)  # a bad target is reported now, not at the first value
    cache = {}

    def resolve(recorded):
        got = cache.get(recorded)
        if got is not None:
            return got
        name = recorded
        if isinstance(device, str):
            name = device
        elif isinstance(device, dict) and _bare(recorded) in table:
            name = table[_bare(recorded)]
        elif callable(device) and not isinstance(device, dict):
            name = device(recorded)
        else:  # "xpux": this program's default device (see megengine.device._saved_device_here)
            name = _saved_device_here("xpux" if version == 1 and recorded == "gpu0" else recorded)
        try:
            got = canonical_device(name)
        except (ValueError, RuntimeError) as e:
            raise ValueError(
                f"load: the program was dumped for device {recorded!r}, which does not exist "
                f"here ({e}). Map it to a device of this machine: load(file, device='cpu0'), "
                f"GraphInference(file, device='cpu0') or device={{{recorded!r}: 'cpu0'}}") from e
        cache[recorded] = got
        return got

    return resolve
