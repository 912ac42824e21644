"""Test CLI: ``python basicsr_iln/test.py -opt OPT.yml`` (or ``basicsr-iln-test``).

Evaluates ``path.pretrain_network_g`` on every ``datasets.test_*`` set with the option file's
``val.metrics``; writes restored images (``val.save_img``), a log and ``metrics.jsonl`` under
``results/<name>/``. With ``--launcher pytorch|slurm`` the test sets are split across the processes
and the metrics gathered (IRModel.validation): the same numbers as a single-process run.

``val.precision`` (a name or a list) or ``--precision fp32,fp16`` evaluates in each listed precision
(fp32, bf16, fp16: a cast copy of the network, not autocast; int8: dynamic quantisation of the Linear
layers); each metrics record names its ``precision`` and counts the ``nonfinite`` output values.
"""
import sys
from os import path as osp

if __package__ in (None, ''):  # run as a script: make the repository importable
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import basicsr_iln  # noqa: E402,F401
import torch  # noqa: E402
from basicsr.data import build_dataloader  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.utils import make_exp_dirs  # noqa: E402

from basicsr_iln.analysis.precision import parse_precisions  # noqa: E402
from basicsr_iln.utils.checks import build_dataset_checked  # noqa: E402
from basicsr_iln.utils.checks import check_checkpoint_path, check_datasets, check_writable_folder  # noqa: E402
from basicsr_iln.utils.console import open_run_log  # noqa: E402
from basicsr_iln.utils.denormals import set_denormal_flushing  # noqa: E402
from basicsr_iln.utils.dist import close_dist  # noqa: E402
from basicsr_iln.utils.errors import ConfigError, run_cli  # noqa: E402
from basicsr_iln.utils.options import parse_options, root_path_from_env  # noqa: E402


def test_pipeline(root_path, argv=None):
    opt, args = parse_options(root_path, is_train=False, argv=argv)
    denormals = set_denormal_flushing(opt['flush_denormal'])  # before any parallel op: threads inherit it
    check_datasets(opt)
    if args.precision:
        precisions = parse_precisions(args.precision, '--precision')
    else:
        precisions = parse_precisions(opt['val']['precision'], "option 'val.precision'")
    if not opt['path'].get('pretrain_network_g'):
        raise ConfigError("testing needs 'path.pretrain_network_g' (the checkpoint to evaluate)")
    check_checkpoint_path(opt)  # a test file of our own runs names the training run that writes its checkpoint
    check_writable_folder(opt['path']['results_root'], 'results')
    torch.backends.cudnn.benchmark = True

    make_exp_dirs(opt)  # an existing results folder is renamed to *_archived_<time>, never overwritten
    logger = open_run_log(opt, 'test')
    denormals.log(logger)

    test_loaders = []
    for phase, dataset_opt in sorted(opt['datasets'].items()):
        test_set = build_dataset_checked(dataset_opt, phase)
        test_loaders.append(build_dataloader(test_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                             sampler=None, seed=opt['manual_seed']))
        logger.info(f"Test set {dataset_opt['name']}: {len(test_set)} images.")

    model = build_model(opt)
    val_opt = opt['val']
    suffix = val_opt.get('suffix') or opt['name']
    for precision in precisions:
        model.set_eval_precision(precision)
        if len(precisions) > 1:  # one image file per precision (build_model copied the options)
            model.opt.setdefault('val', {})['suffix'] = f'{suffix}_{precision}'
        for loader in test_loaders:
            logger.info(f"Testing {loader.dataset.opt['name']} in {precision}...")
            model.validation(loader, current_iter=opt['name'], tb_logger=None, save_img=val_opt['save_img'])
    close_dist()
    return opt


def main(argv=None):
    run_cli(lambda a: test_pipeline(root_path_from_env(), a), argv)


if __name__ == '__main__':
    main()
