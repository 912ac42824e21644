from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
requirements = [
    line.strip() for line in (here / 'requirements.txt').read_text().splitlines()
    if line.strip() and not line.startswith('#')
]

setup(
    name='basicsr_iln',
    version='0.1.0',
    description='i-LN for image restoration Transformers (SwinIR, HAT, DRCT) on top of BasicSR',
    long_description=(here / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=find_packages(include=['basicsr_iln', 'basicsr_iln.*']),
    install_requires=requirements,
    extras_require={'export': ['onnx', 'onnxruntime']},  # basicsr-iln-export checks its files with onnxruntime
    entry_points={
        'console_scripts': [
            'basicsr-iln-train=basicsr_iln.train:main',
            'basicsr-iln-test=basicsr_iln.test:main',
            'basicsr-iln-infer=basicsr_iln.infer:main',
            'basicsr-iln-export=basicsr_iln.export:main',
        ],
    },
)
