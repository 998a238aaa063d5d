"""The plugins that ship with mailgate; each registers under the `mailgate.plugins` entry points."""
