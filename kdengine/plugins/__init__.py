"""The plugin system: hook specifications, the plugin manager, the catalog of components, the
component base classes and the contract checks plugin authors run (``kdengine.testing``)."""
