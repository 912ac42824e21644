"""Checkpoint I/O: safe loading of every released layout (``.pth`` and ``.safetensors``), atomic saving,
clear mismatch errors, the network config our checkpoints carry (utils/network_config.py), pruning, and
finding the checkpoint a run resumes from."""
import json
import os
import pickle
import re
import tempfile
from os import path as osp

import safetensors.torch
import torch
from basicsr.utils import check_resume, get_root_logger
from safetensors import SafetensorError

from basicsr_iln.archs.norms import norm_scheme
from .dist import broadcast_from_rank0
from .errors import ConfigError
from .network_config import NETWORK_CONFIG_KEY, checkpoint_network_config, config_differences, describe_differences

# Where released checkpoints keep their weights, in the order we look for them.
PARAM_KEYS = ('params_ema', 'params', 'state_dict', 'model')
SAFETENSORS_SUFFIX = '.safetensors'


def load_checkpoint_file(path):
    """``torch.load`` with ``weights_only=True``: a file that needs arbitrary unpickling is refused.
    A ``.safetensors`` file is read as ``{'params': tensors, 'network_config': ...}`` (see load_safetensors)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if str(path).lower().endswith(SAFETENSORS_SUFFIX):
        return load_safetensors(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's first line suggests weights_only=False; the line naming the blocked global is the useful one.
        blocked = [line.strip() for line in str(err).splitlines() if 'GLOBAL' in line]
        if blocked:
            raise ConfigError(f'refusing to load {path}: it is not a plain weights file and would need to run '
                              f'pickled code ({blocked[0]}); only load it unsafely if you trust its source, '
                              'and re-save its state dict') from None
        raise ConfigError(f'cannot read checkpoint {path}: not a PyTorch checkpoint ({_reason(err)})') from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as err:  # truncated, empty or foreign files
        raise ConfigError(f'cannot read checkpoint {path}: {_reason(err)}') from None


def _reason(err):
    """The telling line of a load error: torch's unpickler puts it after its advice (``Unsupported operand``);
    some errors have no message at all (an empty file's EOFError)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines if line.startswith(('Unsupported', 'Invalid', 'invalid'))]
    return (telling or lines or [type(err).__name__ + ', the file ends early or is not a checkpoint'])[0]


def load_safetensors(path):
    """``{'params': tensors}``, plus ``network_config`` when the metadata holds one (JSON). Safe by
    construction: the format is a JSON header and raw tensor bytes, nothing in it can run."""
    try:
        with safetensors.safe_open(str(path), framework='pt') as f:
            metadata = f.metadata() or {}
            checkpoint = {'params': {key: f.get_tensor(key) for key in f.keys()}}
    except (SafetensorError, OSError) as err:
        raise ConfigError(f'cannot read checkpoint {path}: {str(err).splitlines()[0]}') from None
    if NETWORK_CONFIG_KEY in metadata:
        try:
            checkpoint[NETWORK_CONFIG_KEY] = json.loads(metadata[NETWORK_CONFIG_KEY])
        except json.JSONDecodeError as err:
            raise ConfigError(f"checkpoint {path}: its metadata '{NETWORK_CONFIG_KEY}' is not JSON ({err})") from None
    return checkpoint


def save_safetensors(state_dict, path, network_config=None):
    """Write ``state_dict`` to ``path`` as safetensors (atomically), with ``network_config`` as JSON in the
    metadata key ``network_config``: other tools load it without pickle, ours rebuild the network from it."""
    tensors = {key: value.detach().cpu().clone().contiguous() for key, value in state_dict.items()}  # no shared memory
    metadata = {'format': 'pt'}
    if network_config is not None:
        metadata[NETWORK_CONFIG_KEY] = json.dumps(network_config)
    payload = safetensors.torch.save(tensors, metadata)
    _atomic_write(path, lambda f: f.write(payload))


def extract_state_dict(checkpoint, path, param_key='params'):
    """The network weights of a BasicSR (``params``/``params_ema``), SwinIR-repo (raw state dict) or
    other released checkpoint; ``param_key`` is preferred, then ``PARAM_KEYS`` in order."""
    if not isinstance(checkpoint, dict):
        raise ConfigError(f'checkpoint {path} holds a {type(checkpoint).__name__}, not a state dict')
    for key in (param_key, *PARAM_KEYS):
        if key and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ConfigError(f"checkpoint {path} has no weights under {param_key!r} or any of {', '.join(PARAM_KEYS)}; "
                          f'top-level keys: {sorted(checkpoint)[:8]}')
    return {k[7:] if k.startswith('module.') else k: v for k, v in checkpoint.items()}


def _first(items, n=5):
    items = sorted(items)
    return ', '.join(items[:n]) + (f' (+{len(items) - n} more)' if len(items) > n else '') if items else 'none'


def check_network_config(checkpoint, path, built_config, strict=True, source='network_g'):
    """Refuse (``strict``) or warn about a checkpoint whose recorded network config differs from the one
    of the network built to load it (``source`` names where that network was given).

    Without a recorded config (released checkpoints) only the keys and shapes can be checked: ``stdnorm``,
    ``eps`` and ``img_range`` leave no trace in the weights. Such a load into a network whose input
    handling is not its norm scheme's default (the official release's) is therefore logged as suspect.
    """
    saved = checkpoint_network_config(checkpoint, path)
    if saved is None:
        kwargs = built_config['kwargs']
        if 'norm_type' in kwargs and kwargs.get('stdnorm', False) != norm_scheme(kwargs['norm_type']).stdnorm:
            get_root_logger().warning(
                f"Checkpoint {path} records no network config, and {source} sets stdnorm "
                f"{json.dumps(kwargs.get('stdnorm'))}, not the default of norm_type {kwargs['norm_type']}: "
                'the outputs are wrong unless the checkpoint was trained so (official i-LN ones need stdnorm true)')
        return
    differences = config_differences(saved, built_config)
    if differences and strict:
        raise ConfigError(f'checkpoint {path} was saved from another network: '
                          f'{describe_differences(differences, source)} (make {source} match the checkpoint, '
                          'or set path.strict_load_g: false to fine-tune from it)')
    if differences:
        get_root_logger().warning(f'Loading {path} into a network built otherwise (strict_load_g false): '
                                  f'{describe_differences(differences, source)}')


def load_weights(net, path, param_key='params', strict=True, arch_desc=None, network_config=None, checkpoint=None):
    """Load a checkpoint into ``net``; a key/shape mismatch raises one error listing the first
    missing, unexpected and mis-shaped keys and the architecture that was built.

    ``strict=False`` is for fine-tuning across scales (HAT and the official i-LN release start x3/x4
    from the x2 model): as in BasicSR, keys that are missing, unexpected or mis-shaped (the upsampler)
    are skipped with a warning; it is still an error when most of the network would stay untouched,
    which means the checkpoint is of another architecture.

    ``network_config``: that of ``net`` (utils/network_config.py), checked against the checkpoint's by
    :func:`check_network_config`. ``checkpoint``: the content of ``path`` when the caller already read it.
    """
    checkpoint = load_checkpoint_file(path) if checkpoint is None else checkpoint
    if network_config is not None:
        check_network_config(checkpoint, path, network_config, strict)
    state = extract_state_dict(checkpoint, path, param_key)
    own = net.state_dict()
    missing = set(own) - set(state)
    unexpected = set(state) - set(own)
    misshaped = {k for k in set(own) & set(state) if own[k].shape != state[k].shape}
    loaded = len(own) - len(missing) - len(misshaped)
    if (strict and (misshaped or missing or unexpected)) or (not strict and loaded < len(own) / 2):
        shapes = [f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in sorted(misshaped)]
        differing = misshaped | missing | unexpected
        hint = ('. Only the upsampler differs: the checkpoint is for another scale (check scale and '
                'network_g.upscale)' if all(k.startswith('upsample.') for k in differing) else '')
        hint += '' if strict else f' (strict_load_g false, but only {loaded} of {len(own)} entries would load)'
        raise ConfigError(f'checkpoint {path} does not fit the network {arch_desc or type(net).__name__}: '
                          f'missing keys: {_first(missing)}; unexpected keys: {_first(unexpected)}; '
                          f'mis-shaped (checkpoint vs network): {_first(shapes, 3)}{hint}')
    if not strict and (missing or unexpected or misshaped):
        get_root_logger().warning(f'Loading {path} with strict_load_g false: {loaded} of {len(own)} entries '
                                  f'loaded; left as initialised: {_first(missing | misshaped)}; ignored from '
                                  f'the checkpoint: {_first(unexpected | misshaped)}')
        state = {k: v for k, v in state.items() if k not in misshaped}
    net.load_state_dict(state, strict=strict)
    return state


def atomic_torch_save(obj, path):
    """``torch.save(obj, path)``, atomically (:func:`_atomic_write`)."""
    _atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_write(path, write):
    """Call ``write(file)`` on a temporary file in the same folder, fsync, then rename: a crash never
    leaves a truncated file under ``path``. The temporary is ``.tmp_*.pth`` whatever ``path`` is, the
    pattern :func:`remove_stale_temporaries` deletes."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp_', suffix='.pth', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def remove_stale_temporaries(*folders):
    """Delete the ``.tmp_*.pth`` files a killed :func:`atomic_torch_save` left behind; returns their paths.

    Only for a folder no live process is writing to (rank 0 before resuming).
    """
    removed = []
    for folder in folders:
        if osp.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if name.startswith('.tmp_') and name.endswith('.pth'):
                    os.remove(osp.join(folder, name))
                    removed.append(osp.join(folder, name))
    return removed


STATE_PATTERN = r'(\d+)\.state'  # training states: <iter>.state


def net_pattern(label):
    """Network checkpoints: <label>_<iter>.pth (never <label>_latest.pth)."""
    return rf'{re.escape(label)}_(\d+)\.pth'


def _numbered_files(folder, pattern):
    """{iteration: file name} of the files in ``folder`` matching ``pattern`` (its one group: the iteration)."""
    if not osp.isdir(folder):
        return {}
    found = (re.fullmatch(pattern, name) for name in os.listdir(folder))
    return {int(m.group(1)): m.group(0) for m in found if m}


def complete_checkpoint_iters(models_dir, states_dir, label='net_g'):
    """Iterations (ascending) with both ``<label>_<iter>.pth`` and ``<iter>.state`` on disk."""
    nets = _numbered_files(models_dir, net_pattern(label))
    return sorted(set(nets) & set(_numbered_files(states_dir, STATE_PATTERN)))


def prune_checkpoints(models_dir, states_dir, keep, label='net_g'):
    """Delete every ``<label>_<iter>.pth`` / ``<iter>.state`` older than the newest ``keep`` complete pairs.

    Call it only after a new pair is fully written: the newest complete pair always survives, and
    ``<label>_latest.pth`` never matches. Halves of pairs older than the kept ones go too (a kill
    between the two writes leaves one). Returns the removed paths.
    """
    if keep < 1:
        raise ValueError(f'keep must be >= 1 (the newest complete checkpoint is never deleted), got {keep}')
    complete = complete_checkpoint_iters(models_dir, states_dir, label)
    if len(complete) <= keep:
        return []
    oldest_kept = complete[-keep]
    removed = []
    for folder, pattern in ((states_dir, STATE_PATTERN), (models_dir, net_pattern(label))):
        for it, name in sorted(_numbered_files(folder, pattern).items()):
            if it < oldest_kept:
                os.remove(osp.join(folder, name))
                removed.append(osp.join(folder, name))
    return removed


# --- resuming ------------------------------------------------------------------------------------------

def latest_complete_state(opt):
    """(path, state) of the latest training state that loads and whose network checkpoint exists, or
    (None, None).

    Checkpoints are written atomically, so a killed run leaves no truncated file; this still skips
    a state whose network file is missing (e.g. deleted by hand) or that cannot be read, rather than failing.
    """
    states_dir = opt['path']['training_states']
    for it in reversed(complete_checkpoint_iters(opt['path']['models'], states_dir)):
        path = osp.join(states_dir, f'{it}.state')
        try:
            return path, load_checkpoint_file(path)
        except ConfigError as err:
            print(f'Skipping unreadable training state: {err}', flush=True)  # before the logger has its file
    return None, None


def find_resume_state(opt):
    """(path, state) of the training state to resume from (``path.resume_state`` or, with ``--auto_resume``,
    the latest complete one), or (None, None).

    With ``--auto_resume`` under DDP, rank 0 chooses and broadcasts the path: every rank resumes from
    the same state even if its view of the folder differs (a network file system's stale cache).
    """
    if not opt['auto_resume']:
        path = opt['path'].get('resume_state')
        return (path, load_checkpoint_file(path)) if path else (None, None)
    path, state = latest_complete_state(opt) if opt['rank'] == 0 else (None, None)
    path = broadcast_from_rank0(path)
    if path is not None and state is None:
        state = load_checkpoint_file(path)
    return path, state


def prepare_resume(opt):
    """The training state to resume from (or None), with the option paths pointed at its checkpoint."""
    path, state = find_resume_state(opt)
    if state is not None:
        opt['path']['resume_state'] = path
        check_resume(opt, state['iter'])
    return state


def resume_position(state, iters_per_epoch):
    """(epoch, optimizer steps of it already taken) right after the checkpoint ``state``."""
    done = state['iter'] - state['epoch'] * iters_per_epoch
    if done >= iters_per_epoch:
        return state['epoch'] + 1, 0
    return state['epoch'], max(done, 0)
