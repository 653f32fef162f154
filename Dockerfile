# mailproxy in a container: a static binary on distroless, running as a
# non-root user, with the token store on a volume.
#
#   docker build -t mailproxy .
#   docker volume create mailproxy-state
#
# Inside a container the listeners must bind 0.0.0.0, which the config refuses
# for plain IMAP/SMTP unless you say who may send passwords without TLS, and
# the default security.allow_from admits only loopback. For clients on the
# Docker host or the LAN, something like:
#
#   [imap]
#   listen = "0.0.0.0:1143"
#   [smtp]
#   listen = "0.0.0.0:1587"
#   [admin]
#   listen = "0.0.0.0:8025"
#   password_hash = "..."          # required off loopback: mailproxy hash-password
#   [security]
#   allow_from = ["127.0.0.0/8", "::1/128", "172.16.0.0/12", "192.168.1.0/24"]
#   allow_plaintext_from = ["172.16.0.0/12", "192.168.1.0/24"]   # or set up [tls]
#
# Connections from the Docker host itself arrive from the bridge's gateway
# (in 172.16.0.0/12, Docker's default bridge networks); connections from
# other machines keep their own address, so list the LAN too.
#
# Sign an account in, once, in a throw-away container sharing the volume.
# -manual prints a URL to open in any browser; paste back the address the
# browser ends up on. A running `serve` container picks the tokens up at once.
#
#   docker run --rm -it -v mailproxy-state:/var/lib/mailproxy \
#     -v ./mailproxy.toml:/etc/mailproxy/mailproxy.toml:ro \
#     mailproxy login -manual alice@contoso.com
#
# (or `login -device`). Then run the proxy:
#
#   docker run -d --name mailproxy --restart unless-stopped \
#     -v mailproxy-state:/var/lib/mailproxy \
#     -v ./mailproxy.toml:/etc/mailproxy/mailproxy.toml:ro \
#     -p 1143:1143 -p 1587:1587 -p 127.0.0.1:8025:8025 mailproxy
#
# `docker kill -s HUP mailproxy` reloads the config; `docker stop` drains
# (give it --stop-timeout longer than shutdown_timeout). docs/INSTALL.md has
# more.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Set with --build-arg; empty values fall back to the module's build info.
ARG VERSION=""
ARG COMMIT=""
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/mailproxy ./cmd/mailproxy \
 && mkdir -p /out/state /out/etc \
 && chmod 0700 /out/state

# static: CA certificates, /etc/passwd with nonroot (65532), tzdata; no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/mailproxy /mailproxy
# A new named volume takes this directory's owner and mode.
COPY --from=build --chown=65532:65532 /out/state /var/lib/mailproxy
COPY --from=build /out/etc /etc/mailproxy
USER 65532:65532
ENV STATE_DIRECTORY=/var/lib/mailproxy
VOLUME /var/lib/mailproxy
# Plain IMAP and SMTP (STARTTLS when [tls] is set), the admin page.
EXPOSE 1143 1587 8025
# Implicit TLS when imap.listen_tls / smtp.listen_tls are set:
# EXPOSE 1993 1465
ENTRYPOINT ["/mailproxy"]
CMD ["serve", "-config", "/etc/mailproxy/mailproxy.toml"]
