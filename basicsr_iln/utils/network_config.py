"""The network config our checkpoints carry: the architecture and every constructor argument.

A state dict does not say how its network treats the input or normalises: ``stdnorm`` and ``img_range``
scale the input, ``eps`` and ``qk_scale`` are no tensors, and schemes with the same parameter names
(``iln`` / ``ln_star``, ``ln`` / ``in``) look alike. So checkpoints written by training record
``{'type', 'kwargs', 'version'}`` (next to ``params``/``params_ema``, or as JSON in safetensors metadata)
with every argument resolved (defaults filled in, ``stdnorm``/``eps`` None replaced by the norm scheme's):
``basicsr-iln-infer -c FILE`` rebuilds the network from it, and loading it into a network built
otherwise is an error naming the key.
"""
import inspect
import json

import torch
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY

from basicsr_iln.archs.norms import norm_scheme, resolve_stdnorm
from .errors import ConfigError

NETWORK_CONFIG_KEY = 'network_config'
# Arguments that change training only (dropout, stochastic depth, activation checkpointing): in eval
# mode the network computes the same whatever their value, so they never make two configs disagree.
TRAINING_ONLY_KWARGS = frozenset({'drop_rate', 'attn_drop_rate', 'drop_path_rate', 'use_checkpoint'})
_SCALARS = (bool, int, float, str, type(None))


def arch_class(arch_type):
    """The registered architecture ``arch_type``, or a ConfigError listing the registered ones."""
    if arch_type not in ARCH_REGISTRY:
        valid = ', '.join(sorted(name for name, _ in ARCH_REGISTRY))
        raise ConfigError(f"unknown network_g type '{arch_type}'. Registered architectures: {valid}")
    return ARCH_REGISTRY.get(arch_type)


def build_network_checked(net_opt):
    """``build_network`` that names the architecture and the bad option instead of a bare TypeError."""
    arch = net_opt.get('type')
    arch_class(arch)
    try:
        return build_network(net_opt)
    except (TypeError, ValueError) as err:
        raise ConfigError(f'network_g ({arch}): {err}') from None


def check_network_builds(net_opt):
    """Raise ``build_network_checked``'s error, if any, without allocating or initialising weights: the
    network is built on the meta device and dropped. Lets a model report a bad ``network_g`` as one line
    and still build its networks the way BasicSR does."""
    with torch.device('meta'):
        build_network_checked(net_opt)


def constructor_defaults(cls):
    """Keyword defaults of ``cls``: its ``__init__``'s, then those of each base it passes ``**kwargs`` on
    to; a subclass's default wins (``HAT_iLN``'s norm_type 'iln' over ``HAT``'s 'ln')."""
    signatures = []
    for klass in cls.__mro__:
        if '__init__' in vars(klass):
            signatures.append(inspect.signature(klass.__init__).parameters.values())
            if all(param.kind is not param.VAR_KEYWORD for param in signatures[-1]):
                break
    defaults = {}
    for params in reversed(signatures):  # the base's order, the subclass's values
        defaults.update((param.name, param.default) for param in params if param.default is not param.empty)
    return defaults


def _is_data(value):
    if isinstance(value, (list, tuple)):
        return all(_is_data(v) for v in value)
    return isinstance(value, _SCALARS)


def _as_data(value):
    """Tuples as lists: what YAML, JSON and ``torch.load(weights_only=True)`` give back."""
    return [_as_data(v) for v in value] if isinstance(value, (list, tuple)) else value


def network_config(net_opt):
    """``{'type', 'kwargs', 'version'}`` of the network ``net_opt`` (``network_g``) builds, plain data only.

    A default that is not data (BasicSR SwinIR's ``norm_layer`` class) is left out: rebuilding gets it again.
    """
    import basicsr_iln  # here: this module is imported while the package initialises
    arch_type = net_opt.get('type')
    kwargs = {**constructor_defaults(arch_class(arch_type)), **{k: v for k, v in net_opt.items() if k != 'type'}}
    if 'norm_type' in kwargs:
        try:
            if 'stdnorm' in kwargs:
                kwargs['stdnorm'] = resolve_stdnorm(kwargs['norm_type'], kwargs['stdnorm'])
            if 'eps' in kwargs:
                kwargs['eps'] = norm_scheme(kwargs['norm_type']).resolve_eps(kwargs['eps'])
        except ValueError as err:
            raise ConfigError(f'network_g ({arch_type}): {err}') from None
    kwargs = {key: _as_data(value) for key, value in kwargs.items() if _is_data(value)}
    return {'type': arch_type, 'kwargs': kwargs, 'version': basicsr_iln.__version__}


def network_options(config):
    """The ``network_g`` mapping that rebuilds the network of ``config``."""
    return {'type': config['type'], **config['kwargs']}


def checkpoint_network_config(checkpoint, path):
    """The network config a loaded checkpoint carries, or None (released checkpoints have none)."""
    config = checkpoint.get(NETWORK_CONFIG_KEY) if isinstance(checkpoint, dict) else None
    if config is None:
        return None
    if not isinstance(config, dict) or not isinstance(config.get('type'), str) or \
            not isinstance(config.get('kwargs'), dict):
        raise ConfigError(f"checkpoint {path}: '{NETWORK_CONFIG_KEY}' must be a mapping with a 'type' string and "
                          f"a 'kwargs' mapping, got {str(config)[:80]}")
    return config


def _same_architecture(type_a, type_b):
    """Equal names, an alias (HAT-iLN), or a subclass that only changes a default the kwargs carry (HAT_iLN)."""
    if type_a == type_b:
        return True
    if type_a not in ARCH_REGISTRY or type_b not in ARCH_REGISTRY:
        return False
    class_a, class_b = ARCH_REGISTRY.get(type_a), ARCH_REGISTRY.get(type_b)
    return issubclass(class_a, class_b) or issubclass(class_b, class_a)


def config_differences(saved, built):
    """``[(key, saved value, built value)]`` where two network configs build networks that compute
    differently: the type, and every argument both record except the training-only ones."""
    differences = [] if _same_architecture(saved['type'], built['type']) else [('type', saved['type'], built['type'])]
    for key in sorted(set(saved['kwargs']) & set(built['kwargs']) - TRAINING_ONLY_KWARGS):
        if saved['kwargs'][key] != built['kwargs'][key]:
            differences.append((key, saved['kwargs'][key], built['kwargs'][key]))
    return differences


def describe_differences(differences, source):
    """'stdnorm is true in the checkpoint but false in SOURCE; ...' (values as YAML/JSON writes them)."""
    return '; '.join(f'{key} is {json.dumps(saved)} in the checkpoint but {json.dumps(built)} in {source}'
                     for key, saved, built in differences)
