"""Make the PyPI BasicSR 1.4.2 importable on current torchvision, without touching site-packages.

BasicSR imports ``torchvision.transforms.functional_tensor``, a private module that torchvision
renamed to ``_functional_tensor`` (0.15) and removed (0.17). We register an alias module under the
old name before BasicSR is imported. Nothing else in BasicSR is patched here.
"""
import sys
import types


def install_torchvision_alias():
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision: nothing to do)
        return
    except ImportError:
        pass
    from torchvision.transforms import _functional_tensor
    alias = types.ModuleType(name)
    alias.__dict__.update({k: v for k, v in vars(_functional_tensor).items() if not k.startswith('__')})
    sys.modules[name] = alias


install_torchvision_alias()
