"""Everything that talks to Google Cloud: the one place its SDKs are imported.

Containers (the Docker SDK) are edge.containers.
"""
