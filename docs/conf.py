"""Sphinx configuration of the kwneuro-pydra documentation."""

from kwneuro_pydra import __version__

project = "kwneuro-pydra"
author = "kwneuro-pydra developers"
release = __version__
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
exclude_patterns = ["_build"]
html_static_path = ["_static"]
suppress_warnings = ["myst.header"]
nitpicky = False
