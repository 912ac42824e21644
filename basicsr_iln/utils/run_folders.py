"""The folders a new training run creates, undone when its start-up fails on bad input.

BasicSR renames an existing ``experiments/<name>`` (and ``tb_logger/<name>``) to
``<name>_archived_<time>`` and creates a fresh one. A run that then stops on a user error (a dataset
smaller than the global batch, an architecture that cannot be built) would leave an empty folder
behind and the previous run's results under another name. ``undo`` removes what this run created and
puts the displaced folders back, so a failed start leaves the disk as it found it.
"""
import glob
import os
import shutil
from os import path as osp

from basicsr.utils import make_exp_dirs, mkdir_and_rename


class NewRunFolders:

    def __init__(self, opt, root_path):
        self.opt = opt
        self.paths = [opt['path']['experiments_root']]
        if opt['logger'].get('use_tb_logger') and 'debug' not in opt['name'] and opt['rank'] == 0:
            self.paths.append(osp.join(root_path, 'tb_logger', opt['name']))
        self.archived_before = {p: set(glob.glob(glob.escape(p) + '_archived_*')) for p in self.paths}

    def create(self):
        make_exp_dirs(self.opt)  # an existing experiment folder is renamed to *_archived_<time>, never overwritten
        for path in self.paths[1:]:
            mkdir_and_rename(path)

    def undo(self):
        if self.opt['rank'] != 0:  # rank 0 created them
            return
        for path in self.paths:
            shutil.rmtree(path, ignore_errors=True)
            displaced = set(glob.glob(glob.escape(path) + '_archived_*')) - self.archived_before[path]
            if len(displaced) == 1:
                os.rename(displaced.pop(), path)
