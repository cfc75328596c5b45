"""Context learners: the trainable prompts, one module per method.

The catalog (:mod:`tunevlseg.catalog`) names them with lazy dotted paths; import a learner
class from its own module. :mod:`tunevlseg.learners.base` states the contract.
"""

__all__: list[str] = []
