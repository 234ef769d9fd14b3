"""A directory put first on the import path of TVM's worker processes only (see ``sitecustomize``)."""
