"""Container registries on GCP: two Artifact Registry Docker repositories per
stack, ``<prefix>-dev`` (bakes push here) and ``<prefix>-prod`` (promotion
copies here by digest). Their URLs are the ``registries`` outputs, in the form
the collection's registry client and skopeo take:
``<region>-docker.pkg.dev/<project>/<repository>``.

The prod repository has immutable tags (Artifact Registry then refuses to move
or delete a tag, the same rule the collection enforces on every registry) and
is protected from ``pulumi destroy`` on prod stacks. The dev repository keeps
tags mutable at the registry so retention can delete old images; the
collection still refuses to move a tag there. The instance service account
may read both (and nothing else)."""
import pulumi
import pulumi_gcp as gcp

READER_ROLE = "roles/artifactregistry.reader"


class ArtifactRegistries(pulumi.ComponentResource):
    def __init__(self, name, settings, reader=None, opts=None):
        super().__init__("phoenix:gcp:ArtifactRegistries", name, None, opts)
        self.repositories = {}
        self.urls = {}
        self.readers = []
        for env in ("dev", "prod"):
            repository_id = f"{name}-{env}"
            repo = gcp.artifactregistry.Repository(
                repository_id,
                repository_id=repository_id,
                project=settings.project,
                location=settings.region,
                format="DOCKER",
                description=f"phoenix.deploy {env} images ({settings.stack})",
                docker_config=gcp.artifactregistry.RepositoryDockerConfigArgs(immutable_tags=env == "prod"),
                labels={"phoenix-stack": settings.stack, "phoenix-registry": env},
                opts=pulumi.ResourceOptions(parent=self, protect=env == "prod" and settings.prod))
            self.repositories[env] = repo
            self.urls[env] = pulumi.Output.concat(settings.region, "-docker.pkg.dev/", settings.project, "/",
                                                  repo.repository_id)
            if reader is not None:
                self.readers.append(gcp.artifactregistry.RepositoryIamMember(
                    f"{repository_id}-reader",
                    project=settings.project,
                    location=settings.region,
                    repository=repo.repository_id,
                    role=READER_ROLE,
                    member=reader,
                    opts=pulumi.ResourceOptions(parent=self)))
        self.register_outputs({"urls": self.urls})
