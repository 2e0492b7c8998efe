"""Everything that talks to Google Cloud or a container engine: the one place their SDKs are imported."""
