"""Import every module of a sub-package whose name ends in a suffix, so its classes register
themselves into BasicSR's registries (the same convention BasicSR uses for its own folders)."""
import importlib
import pkgutil


def import_modules_with_suffix(package_name, package_path, suffix):
    return [
        importlib.import_module(f'{package_name}.{info.name}') for info in pkgutil.iter_modules(package_path)
        if info.name.endswith(suffix)
    ]
