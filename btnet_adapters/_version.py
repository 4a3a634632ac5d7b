"""The package version, alone in a module at the bottom of the import graph so that any layer
(:mod:`btnet_adapters.hub` records it in saved configs) can read it without importing the
package root, which sits above the model."""

__version__ = "0.1.0"
