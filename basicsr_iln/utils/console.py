"""What the CLIs show on the console versus what only their log file gets.

Why: BasicSR logs the whole option dict and the whole network (hundreds of lines) at INFO, burying the
progress lines a user watches; the log file keeps them for the record. A record logged with
``extra=FILE_ONLY`` skips the console handlers (those installed by :func:`quiet_console`); every other
record is shown as before.
"""
import logging
import re
from os import path as osp

from basicsr.utils import MessageLogger, get_env_info, get_root_logger, get_time_str
from basicsr.utils.dist_util import master_only
from basicsr.utils.options import dict2str

FILE_ONLY_ATTRIBUTE = 'file_only'
FILE_ONLY = {FILE_ONLY_ATTRIBUTE: True}  # logger.info(text, extra=FILE_ONLY): the log file only


def _not_file_only(record):
    return not getattr(record, FILE_ONLY_ATTRIBUTE, False)


def quiet_console(logger):
    """Keep ``FILE_ONLY`` records off the console handlers of ``logger`` (a FileHandler is not one); idempotent."""
    for handler in logger.handlers:
        if not isinstance(handler, logging.FileHandler) and _not_file_only not in handler.filters:
            handler.addFilter(_not_file_only)
    return logger


def open_run_log(opt, phase):
    """BasicSR's logger writing ``<log folder>/<phase>_<name>_<time>.log``, its console quieted; the environment
    is logged, the options only to the file."""
    log_file = osp.join(opt['path']['log'], f"{phase}_{opt['name']}_{get_time_str()}.log")
    logger = quiet_console(get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file))
    logger.info(get_env_info())
    logger.info(dict2str(opt), extra=FILE_ONLY)
    return logger


@master_only
def log_network(net, bare):
    """BaseModel.print_network with the dump of the layers of ``bare`` (``net`` without its DDP / compile
    wrappers) in the log file only: the classes and the parameter count stay on the console."""
    wrapper = f'{type(net).__name__} - ' if bare is not net else ''
    logger = get_root_logger()
    logger.info(f'Network: {wrapper}{type(bare).__name__}, with parameters: '
                f'{sum(p.numel() for p in bare.parameters()):,d}')
    logger.info(str(bare), extra=FILE_ONLY)


class ProgressLogger(MessageLogger):
    """BasicSR's MessageLogger with a right ETA: BasicSR counts one iteration too many as remaining
    (``total - current - 1`` after iteration ``current``), so its last line read ``eta: -1 day, 23:59:59``.
    Offsetting its ``max_iters`` by one makes the remaining count ``total - current``: 0 at the end, never
    negative."""

    def __init__(self, opt, start_iter=1, tb_logger=None):
        super().__init__(opt, start_iter, tb_logger)
        self.max_iters += 1


def logged_curve(log_text, name='l_pix'):
    """(iteration, value) of ``name`` on each training line of a run log, as ProgressLogger writes them:
    iterations with thousands separators, non-finite values as nan / inf."""
    line = re.compile(rf'iter:\s*([\d,]+).*?{re.escape(name)}: ([-+\d.eE]+|nan|inf)')
    return [(int(m.group(1).replace(',', '')), float(m.group(2))) for m in line.finditer(log_text)]
