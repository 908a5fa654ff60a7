# One image for every process of a pool: `registrar serve --topology FILE --fe FQDN` for a front
# end, `registrar dns serve --topology FILE` for the pool's DNS server, `registrar pool init` to
# make certificates and demo users. See docker-compose.yml.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/registrar
COPY pyproject.toml README.md ./
COPY sipstack ./sipstack
COPY registrar ./registrar
COPY examples ./examples
RUN pip install --no-cache-dir . \
 && useradd --system --home /var/lib/registrar registrar \
 && mkdir -p /var/lib/registrar && chown registrar /var/lib/registrar
USER registrar
VOLUME ["/var/lib/registrar"]
EXPOSE 5060/udp 5060/tcp 5061/tcp 5080/tcp
ENTRYPOINT ["registrar"]
CMD ["--help"]
