"""nasforge: a declarative architecture compiler and neural-architecture-search engine.

Write a network (or a space of networks) as a YAML graph of primitive ops; nasforge checks it, counts
parameters and FLOPs, and builds it as a ``torch.fx.GraphModule``::

    import nasforge
    spec = nasforge.load("specs/models/resnet.yaml")
    print(spec.check().totals)
    gm = spec.build()
"""

from nasforge.errors import Location, SpecError

__version__ = "0.1.0"


def __getattr__(name: str):
    # The API imports torch; keep `import nasforge` light for the CLI's --help and error paths.
    if name in ("load", "loads", "Spec"):
        from nasforge import api

        return getattr(api, name)
    raise AttributeError(f"module 'nasforge' has no attribute {name!r}")


__all__ = ["load", "loads", "Spec", "SpecError", "Location", "__version__"]
