"""Package list for setuptools; everything else is in pyproject.toml.

The promotion policy lives in the project's ``registry/`` folder and is installed as the package
``porelab._registry`` (``package-dir`` in pyproject.toml). pyproject.toml cannot combine automatic package
discovery with a package mapped from another folder, so the list is made here.
"""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["porelab", "porelab.*"]), "porelab._registry"])
