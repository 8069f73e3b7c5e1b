"""The machine under a search: Ray's private APIs (one small function each), Ray's processes, storage paths."""
