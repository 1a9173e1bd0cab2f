using Microsoft.AspNetCore.Components.Authorization;
using Microsoft.AspNetCore.Components.Server;

namespace Fabric.Dashboard;

/// <summary>
/// Re-checks an open page's sign-in against the users file every few seconds: a user removed from it or given another
/// role loses the page's signed-in view (the server already refuses their changes at once: see <see cref="Users.IsAdmin"/>).
/// </summary>
public sealed class UsersRevalidation(ILoggerFactory loggers, Users users) : RevalidatingServerAuthenticationStateProvider(loggers)
{
    protected override TimeSpan RevalidationInterval => TimeSpan.FromSeconds(5);

    protected override Task<bool> ValidateAuthenticationStateAsync(AuthenticationState authenticationState, CancellationToken cancellationToken) =>
        Task.FromResult(users.StillValid(authenticationState.User));
}
