"""Every `*_arch.py` module here registers itself into BasicSR's registry on import."""
from basicsr_iln.utils.registration import import_modules_with_suffix

_modules = import_modules_with_suffix(__name__, __path__, '_arch')
