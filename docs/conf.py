"""Sphinx configuration of the elmojax documentation: MyST Markdown pages, the API from docstrings.

Built in CI with ``sphinx-build -W --keep-going -n docs site``: every warning (a broken link, a
missing page or anchor, an unresolved reference, a docstring that does not render) fails the build.
"""

import elmojax

project = "elmojax"
author = "elmojax developers"
copyright = "elmojax developers"
release = version = elmojax.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # `[text](page.md#a-heading)` links, as GitHub renders them
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = f"elmojax {version}"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_inherit_docstrings = False  # flax's own docstrings (setup, __call__) are not ours to check

# names in docstrings and annotations that belong to other libraries (CI has no network to fetch
# their inventories) or to the standard library, and a few undocumented helpers docstrings name
_TYPING = "Any|BinaryIO|Callable|Counter|Iterable|Iterator|Mapping|NamedTuple|Protocol|Sequence|NoneType|T"
_LAZY = "Embedder|Elmo|ScalarMix|TrainConfig|batch_to_ids|prepare_corpus|export_run"
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|jnp|np|numpy|flax|nn|optax|orbax|ocp|h5py|pyarrow|pa|tqdm|argparse)(\..*)?"),
    (r"py:.*", rf"((pathlib|collections(\.abc)?|typing)\.)?(Path|{_TYPING})|Array|NamedSharding"),
    (r"py:.*", rf"(elmojax\.)?({_LAZY})|elmojax\.train\.train"),  # the package's lazy re-exports
    # helpers without docstrings, and methods named relative to another module's class
    (r"py:.*", r"OovTable(\.keys)?|state_dict|trim_char_ids|(elmojax\.model\.kernels\.lstm\.)?lstm_layers"),
    (r"py:.*", r"__call__|DataParallel\.\w+"),
]
