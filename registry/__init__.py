"""The promotion policy (``policy.json``), installed as the package ``porelab._registry``.

setuptools maps ``porelab._registry`` onto this folder (``setup.py``, ``pyproject.toml``), so a plain and an
editable install both ship the one file; ``porelab.tracking.load_policy`` reads it with
``importlib.resources``.
"""
