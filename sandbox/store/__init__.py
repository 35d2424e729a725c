"""The stores under the one state directory (audit/paths.py): what pysandbox keeps on disk.

    images        the layer store: content-addressed layers, image records, the layer seal
    archive       image import (tar, OCI layout, docker-archive, a directory) and tree → tar
    extract       a hostile layer tar extracted into a layer directory
    tarsafe       bounds for reading untrusted tar streams and JSON
    treewalk      walking a directory someone else writes, by descriptors only
    overlay       an image's overlay root: prepared (supervisor), mounted (PID 1), finished
    idshift       layers for a root mapped to another uid range: idmapped mounts or shifted copies
    mountpoints   the per-sandbox top layer: mount points and container-interface files
    containers    kept containers: ls, rm, diff, commit
    volumes       named volumes
    state         per-sandbox state of named/detached sandboxes
    reclaim       the registry of what each launch creates on the host; the reclaimer

Nothing is re-exported here: a name lives in one module.
"""
