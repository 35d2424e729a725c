"""`pysandbox build`: a Dockerfile (policies/dockerfile.py) built layer by layer into the image store.

executor.py the executor: stages, instructions, the build cache, the image record
steps.py    RUN through the normal launcher under the shipped `build` profile; COPY/ADD layers
view.py     a read-only merged view of layer directories (sources of COPY --from, destinations)
ignore.py   .dockerignore with Docker's pattern rules
progress.py the progress display (rich on a terminal, plain lines otherwise, or quiet)
"""
