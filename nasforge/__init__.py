"""nasforge: a declarative architecture compiler and neural-architecture-search engine.

Write a network (or a space of networks) as a YAML graph of primitive ops; nasforge checks it, counts
parameters and FLOPs, and builds it as a ``torch.fx.GraphModule``::

    import nasforge
    spec = nasforge.load("specs/models/resnet.yaml")
    print(spec.check().totals)
    gm = spec.build()
    compiled = nasforge.load_artifact("out/")    # what `nasforge compile ... -o out/` wrote
"""

from nasforge.errors import Location, SpecError

__version__ = "0.1.0"


def __getattr__(name: str):
    # The API imports torch; keep `import nasforge` light for the CLI's --help and error paths.
    if name in ("load", "loads", "Spec"):
        from nasforge import api

        return getattr(api, name)
    if name == "load_artifact":  # torch-free: ONNX Runtime and TVM artifacts load without it
        from nasforge.backends.artifact import load_artifact

        return load_artifact
    raise AttributeError(f"module 'nasforge' has no attribute {name!r}")


__all__ = ["load", "loads", "load_artifact", "Spec", "SpecError", "Location", "__version__"]
